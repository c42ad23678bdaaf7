//! The metering rewrite: a template is parsed to minijinja's syntax tree and printed back as an
//! equivalent template in which every operation that can build a large value goes through a
//! checked helper ([`crate::meter`]):
//!
//! - `a ~ b`, `a + b`, `a * b` become `__odm_op("~", a, b)` (sizes checked before the value is
//!   built);
//! - every filter and call result passes `__odm_out(...)`, every filter input and call argument
//!   `__odm_in(...)`, and so do both sides of comparisons and the container of `in`;
//! - everything emitted (`{{ ... }}` and literal text, also inside `{% set %}` blocks, macros and
//!   call blocks, whose output is captured in memory) passes `__odm_emit(...)`;
//! - `{% filter %}` blocks and filtered `{% set %}` blocks become a capture and a metered filter.
//!
//! The printed template is fully parenthesized and keeps all literal text inside expression
//! tags, so its meaning does not depend on operator precedence or whitespace settings; the
//! original line numbers are kept (newlines inside tags) so errors name the right line.

use std::fmt::Write;

use minijinja::machinery::ast::{self, BinOpKind, CallArg, CompareOpKind, Expr, Stmt, UnaryOpKind};
use minijinja::machinery::{WhitespaceConfig, parse};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The prefix of the helpers; templates may not name anything with it.
pub const PREFIX: &str = "__odm_";

/// Parses `source` (with the environment's whitespace settings) and prints the metered form.
pub fn instrument(source: &str, ws: WhitespaceConfig) -> Result<String, Error> {
    let ast = parse(source, "<template>", SyntaxConfig, ws)?;
    let mut p = Printer { out: String::with_capacity(source.len() * 2), line: 1, counter: 0 };
    p.stmt(&ast)?;
    Ok(p.out)
}

struct Printer {
    out: String,
    line: usize,
    counter: usize,
}

fn refuse(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.starts_with(PREFIX) {
        return Err(refuse(format!("names starting with {PREFIX} are reserved: {name}")));
    }
    Ok(())
}

impl Printer {
    fn push(&mut self, s: &str) {
        self.out.push_str(s);
    }

    /// Newlines (inside a tag) until the output reaches `line`.
    fn goto(&mut self, line: u16) {
        while self.line < usize::from(line) {
            self.out.push('\n');
            self.line += 1;
        }
    }

    fn body(&mut self, stmts: &[Stmt<'_>]) -> Result<(), Error> {
        for s in stmts {
            self.stmt(s)?;
        }
        Ok(())
    }

    fn open(&mut self, line: u16) {
        self.push("{%");
        self.goto(line);
        self.push(" ");
    }

    fn fresh(&mut self) -> String {
        self.counter += 1;
        format!("{PREFIX}capture{}", self.counter)
    }

    fn stmt(&mut self, stmt: &Stmt<'_>) -> Result<(), Error> {
        match stmt {
            Stmt::Template(t) => self.body(&t.children)?,
            Stmt::EmitExpr(e) => {
                self.push("{{");
                self.goto(e.span().start_line);
                self.push(" __odm_emit(");
                self.expr(&e.expr)?;
                self.push(") }}");
            }
            Stmt::EmitRaw(r) => {
                if !r.raw.is_empty() {
                    self.push("{{ __odm_emit(");
                    string_literal(&mut self.out, r.raw);
                    self.push(") }}");
                }
            }
            Stmt::ForLoop(f) => {
                self.open(f.span().start_line);
                self.push("for ");
                self.target(&f.target)?;
                self.push(" in ");
                self.expr(&f.iter)?;
                if let Some(filter) = &f.filter_expr {
                    self.push(" if ");
                    self.expr(filter)?;
                }
                if f.recursive {
                    self.push(" recursive");
                }
                self.push(" %}");
                self.body(&f.body)?;
                if !f.else_body.is_empty() {
                    self.push("{% else %}");
                    self.body(&f.else_body)?;
                }
                self.push("{% endfor %}");
            }
            Stmt::IfCond(i) => {
                self.open(i.span().start_line);
                self.push("if ");
                self.expr(&i.expr)?;
                self.push(" %}");
                self.body(&i.true_body)?;
                if !i.false_body.is_empty() {
                    self.push("{% else %}");
                    self.body(&i.false_body)?;
                }
                self.push("{% endif %}");
            }
            Stmt::WithBlock(w) => {
                self.open(w.span().start_line);
                self.push("with ");
                for (n, (target, value)) in w.assignments.iter().enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.target(target)?;
                    self.push(" = ");
                    self.expr(value)?;
                }
                self.push(" %}");
                self.body(&w.body)?;
                self.push("{% endwith %}");
            }
            Stmt::Set(s) => {
                self.open(s.span().start_line);
                self.push("set ");
                self.target(&s.target)?;
                self.push(" = ");
                self.expr(&s.expr)?;
                self.push(" %}");
            }
            Stmt::SetBlock(s) => {
                self.open(s.span().start_line);
                self.push("set ");
                self.target(&s.target)?;
                self.push(" %}");
                self.body(&s.body)?;
                self.push("{% endset %}");
                if let Some(filter) = &s.filter {
                    let mut input = String::new();
                    std::mem::swap(&mut self.out, &mut input);
                    self.target(&s.target)?;
                    std::mem::swap(&mut self.out, &mut input);
                    self.push("{% set ");
                    self.target(&s.target)?;
                    self.push(" = ");
                    self.filter_chain(filter, &input)?;
                    self.push(" %}");
                }
            }
            Stmt::AutoEscape(a) => {
                self.open(a.span().start_line);
                self.push("autoescape ");
                self.expr(&a.enabled)?;
                self.push(" %}");
                self.body(&a.body)?;
                self.push("{% endautoescape %}");
            }
            Stmt::FilterBlock(f) => {
                let name = self.fresh();
                self.open(f.span().start_line);
                let _ = write!(self.out, "set {name} %}}");
                self.body(&f.body)?;
                self.push("{% endset %}{{ __odm_emit(");
                self.filter_chain(&f.filter, &name)?;
                self.push(") }}");
            }
            Stmt::Block(b) => {
                check_name(b.name)?;
                self.open(b.span().start_line);
                let _ = write!(self.out, "block {}{} %}}", b.name, if b.required { " required" } else { "" });
                self.body(&b.body)?;
                self.push("{% endblock %}");
            }
            Stmt::Import(i) => {
                self.open(i.span().start_line);
                self.push("import ");
                self.expr(&i.expr)?;
                self.push(" as ");
                self.target(&i.name)?;
                self.push(" %}");
            }
            Stmt::FromImport(i) => {
                self.open(i.span().start_line);
                self.push("from ");
                self.expr(&i.expr)?;
                self.push(" import ");
                for (n, (name, alias)) in i.names.iter().enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.target(name)?;
                    if let Some(alias) = alias {
                        self.push(" as ");
                        self.target(alias)?;
                    }
                }
                self.push(" %}");
            }
            Stmt::Extends(e) => {
                self.open(e.span().start_line);
                self.push("extends ");
                self.expr(&e.name)?;
                self.push(" %}");
            }
            Stmt::Include(i) => {
                self.open(i.span().start_line);
                self.push("include ");
                self.expr(&i.name)?;
                if i.ignore_missing {
                    self.push(" ignore missing");
                }
                self.push(" %}");
            }
            Stmt::Macro(m) => {
                check_name(m.name)?;
                self.open(m.span().start_line);
                let _ = write!(self.out, "macro {}(", m.name);
                self.params(&m.args, &m.defaults)?;
                self.push(") %}");
                self.body(&m.body)?;
                self.push("{% endmacro %}");
            }
            Stmt::CallBlock(c) => {
                self.open(c.span().start_line);
                self.push("call(");
                self.params(&c.macro_decl.args, &c.macro_decl.defaults)?;
                self.push(") ");
                self.call(&c.call)?;
                self.push(" %}");
                self.body(&c.macro_decl.body)?;
                self.push("{% endcall %}");
            }
            Stmt::Continue(c) => {
                self.open(c.span().start_line);
                self.push("continue %}");
            }
            Stmt::Break(b) => {
                self.open(b.span().start_line);
                self.push("break %}");
            }
            Stmt::Do(d) => {
                self.open(d.span().start_line);
                self.push("do ");
                self.call(&d.call)?;
                self.push(" %}");
            }
        }
        Ok(())
    }

    /// Macro parameters: `a, b=default` (defaults belong to the last parameters).
    fn params(&mut self, args: &[Expr<'_>], defaults: &[Expr<'_>]) -> Result<(), Error> {
        let first_default = args.len().saturating_sub(defaults.len());
        for (n, a) in args.iter().enumerate() {
            if n > 0 {
                self.push(", ");
            }
            self.target(a)?;
            if n >= first_default {
                self.push("=");
                self.expr(&defaults[n - first_default])?;
            }
        }
        Ok(())
    }

    /// An assignment target: a name, `ns.attr`, or a tuple of targets.
    fn target(&mut self, e: &Expr<'_>) -> Result<(), Error> {
        match e {
            Expr::Var(v) => {
                check_name(v.id)?;
                self.push(v.id);
            }
            Expr::GetAttr(g) => {
                self.target(&g.expr)?;
                self.push(".");
                self.push(g.name);
            }
            Expr::List(l) => {
                self.push("(");
                for (n, item) in l.items.iter().enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.target(item)?;
                }
                if l.items.len() == 1 {
                    self.push(",");
                }
                self.push(")");
            }
            Expr::Const(c) => self.constant(&c.value)?,
            other => return Err(refuse(format!("unsupported assignment target: {}", other.description()))),
        }
        Ok(())
    }

    /// `filter` (a chain whose innermost input is absent) applied to the expression text `input`.
    fn filter_chain(&mut self, filter: &Expr<'_>, input: &str) -> Result<(), Error> {
        match filter {
            Expr::Filter(f) => {
                self.push("__odm_out(__odm_in(");
                match &f.expr {
                    Some(inner) => self.filter_chain(inner, input)?,
                    None => self.push(input),
                }
                let _ = write!(self.out, ")|{}(", f.name);
                self.args(&f.args)?;
                self.push("))");
                Ok(())
            }
            other => self.expr(other),
        }
    }

    fn args(&mut self, args: &[CallArg<'_>]) -> Result<(), Error> {
        for (n, a) in args.iter().enumerate() {
            if n > 0 {
                self.push(", ");
            }
            match a {
                CallArg::Pos(e) => self.metered_in(e)?,
                CallArg::Kwarg(name, e) => {
                    check_name(name)?;
                    self.push(name);
                    self.push("=");
                    self.metered_in(e)?;
                }
                CallArg::PosSplat(e) => {
                    self.push("*");
                    self.metered_in(e)?;
                }
                CallArg::KwargSplat(e) => {
                    self.push("**");
                    self.metered_in(e)?;
                }
            }
        }
        Ok(())
    }

    fn metered_in(&mut self, e: &Expr<'_>) -> Result<(), Error> {
        if matches!(e, Expr::Const(_)) {
            return self.expr(e);
        }
        self.push("__odm_in(");
        self.expr(e)?;
        self.push(")");
        Ok(())
    }

    /// A call without its result check (the forms `{% call %}` and `{% do %}` require a call).
    fn call(&mut self, c: &ast::Call<'_>) -> Result<(), Error> {
        self.callee(&c.expr)?;
        self.push("(");
        self.args(&c.args)?;
        self.push(")");
        Ok(())
    }

    /// The callee keeps its shape (a name, a method on an object, `self.block`), which decides how
    /// minijinja calls it.
    fn callee(&mut self, e: &Expr<'_>) -> Result<(), Error> {
        match e {
            Expr::Var(v) => {
                check_name(v.id)?;
                self.push(v.id);
                Ok(())
            }
            Expr::GetAttr(g) => {
                self.push("(");
                self.expr(&g.expr)?;
                self.push(").");
                self.push(g.name);
                Ok(())
            }
            other => {
                self.push("(");
                self.expr(other)?;
                self.push(")");
                Ok(())
            }
        }
    }

    fn expr(&mut self, e: &Expr<'_>) -> Result<(), Error> {
        match e {
            Expr::Var(v) => {
                check_name(v.id)?;
                self.push(v.id);
            }
            Expr::Const(c) => self.constant(&c.value)?,
            Expr::Slice(s) => {
                self.push("(");
                self.expr(&s.expr)?;
                self.push(")[");
                if let Some(x) = &s.start {
                    self.expr(x)?;
                }
                self.push(":");
                if let Some(x) = &s.stop {
                    self.expr(x)?;
                }
                if let Some(x) = &s.step {
                    self.push(":");
                    self.expr(x)?;
                }
                self.push("]");
            }
            Expr::UnaryOp(u) => {
                self.push(match u.op {
                    UnaryOpKind::Not => "(not ",
                    UnaryOpKind::Neg => "(-",
                });
                self.expr(&u.expr)?;
                self.push(")");
            }
            Expr::BinOp(b) => {
                let metered = match b.op {
                    BinOpKind::Concat => Some("~"),
                    BinOpKind::Add => Some("+"),
                    BinOpKind::Mul => Some("*"),
                    _ => None,
                };
                if let Some(op) = metered {
                    let _ = write!(self.out, "__odm_op(\"{op}\", ");
                    self.expr(&b.left)?;
                    self.push(", ");
                    self.expr(&b.right)?;
                    self.push(")");
                    return Ok(());
                }
                let (op, compare) = match b.op {
                    BinOpKind::Eq => ("==", true),
                    BinOpKind::Ne => ("!=", true),
                    BinOpKind::Lt => ("<", true),
                    BinOpKind::Lte => ("<=", true),
                    BinOpKind::Gt => (">", true),
                    BinOpKind::Gte => (">=", true),
                    BinOpKind::ScAnd => ("and", false),
                    BinOpKind::ScOr => ("or", false),
                    BinOpKind::Sub => ("-", false),
                    BinOpKind::Div => ("/", false),
                    BinOpKind::FloorDiv => ("//", false),
                    BinOpKind::Rem => ("%", false),
                    BinOpKind::Pow => ("**", false),
                    BinOpKind::In => ("in", false),
                    BinOpKind::Concat | BinOpKind::Add | BinOpKind::Mul => unreachable!("handled above"),
                };
                self.push("(");
                if compare {
                    self.metered_in(&b.left)?
                } else {
                    self.expr(&b.left)?
                }
                let _ = write!(self.out, " {op} ");
                if compare || matches!(b.op, BinOpKind::In) {
                    self.metered_in(&b.right)?
                } else {
                    self.expr(&b.right)?
                }
                self.push(")");
            }
            Expr::Compare(c) => {
                self.push("(");
                self.metered_in(&c.expr)?;
                for op in &c.ops {
                    self.push(match op.op {
                        CompareOpKind::Eq => " == ",
                        CompareOpKind::Ne => " != ",
                        CompareOpKind::Lt => " < ",
                        CompareOpKind::Lte => " <= ",
                        CompareOpKind::Gt => " > ",
                        CompareOpKind::Gte => " >= ",
                        CompareOpKind::In => " in ",
                        CompareOpKind::NotIn => " not in ",
                    });
                    self.metered_in(&op.expr)?;
                }
                self.push(")");
            }
            Expr::IfExpr(i) => {
                self.push("(");
                self.expr(&i.true_expr)?;
                self.push(" if ");
                self.expr(&i.test_expr)?;
                if let Some(f) = &i.false_expr {
                    self.push(" else ");
                    self.expr(f)?;
                }
                self.push(")");
            }
            Expr::Filter(f) => {
                self.push("__odm_out(__odm_in(");
                match &f.expr {
                    Some(inner) => self.expr(inner)?,
                    None => return Err(refuse("a filter without input")),
                }
                let _ = write!(self.out, ")|{}(", f.name);
                self.args(&f.args)?;
                self.push("))");
            }
            Expr::Test(t) => {
                // Tests only inspect (`is defined` must see an undefined value as it is).
                self.push("((");
                self.expr(&t.expr)?;
                let _ = write!(self.out, ") is {}(", t.name);
                self.args(&t.args)?;
                self.push("))");
            }
            Expr::GetAttr(g) => {
                self.push("(");
                self.expr(&g.expr)?;
                self.push(").");
                self.push(g.name);
            }
            Expr::GetItem(g) => {
                self.push("(");
                self.expr(&g.expr)?;
                self.push(")[");
                self.expr(&g.subscript_expr)?;
                self.push("]");
            }
            Expr::Call(c) => {
                self.push("__odm_out(");
                self.call(c)?;
                self.push(")");
            }
            Expr::List(l) => {
                self.push("[");
                for (n, item) in l.items.iter().enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.expr(item)?;
                }
                self.push("]");
            }
            Expr::Map(m) => {
                self.push("{");
                for (n, (k, v)) in m.keys.iter().zip(&m.values).enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.expr(k)?;
                    self.push(": ");
                    self.expr(v)?;
                }
                self.push("}");
            }
        }
        Ok(())
    }

    /// A literal for a constant the parser produced.
    fn constant(&mut self, v: &Value) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined => self.push("none"),
            ValueKind::None => self.push("none"),
            ValueKind::Bool => self.push(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if v.is_integer() {
                    let _ = write!(self.out, "({v})");
                    return Ok(());
                }
                let f = f64::try_from(v.clone()).map_err(|_| refuse("an unsupported number literal"))?;
                if !f.is_finite() {
                    return Err(refuse("an unsupported number literal"));
                }
                let _ = write!(self.out, "({f:?})");
            }
            ValueKind::String => string_literal(&mut self.out, v.as_str().unwrap_or_default()),
            ValueKind::Seq => {
                self.push("[");
                for (n, item) in v.try_iter()?.enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.constant(&item)?;
                }
                self.push("]");
            }
            ValueKind::Map => {
                self.push("{");
                for (n, k) in v.try_iter()?.enumerate() {
                    if n > 0 {
                        self.push(", ");
                    }
                    self.constant(&k)?;
                    self.push(": ");
                    self.constant(&v.get_item(&k)?)?;
                }
                self.push("}");
            }
            _ => return Err(refuse(format!("an unsupported constant of kind {}", v.kind()))),
        }
        Ok(())
    }
}

/// A double-quoted string literal minijinja reads back as `s`.
fn string_literal(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
