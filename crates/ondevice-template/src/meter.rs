//! Run-time memory bounds: the helpers the metering rewrite ([`crate::rewrite`]) routes every
//! growing operation through, and the per-render meter they charge.
//!
//! One render on one thread owns a [`Meter`] (installed by [`Meter::install`] for the duration of
//! the render). It bounds:
//! - the size of any one value an operation builds (`max_value` bytes, items counted as 16
//!   bytes each), checked *before* the operation allocates for `~`, `+`, `*`, `join`, `replace`
//!   and `indent`, and right after for other filters and calls (whose inputs are checked first,
//!   so one step grows memory by at most a small constant factor);
//! - the bytes built over the whole render (`max_built`): every value built by an operation,
//!   filter or call, and everything emitted, including output captured in memory by
//!   `{% set %}` blocks, macros and call blocks;
//! - the work spent measuring values (`max_built` item visits), so measuring cannot become a time
//!   bomb either.
//!
//! Measuring a value walks it with an early stop at the limit, so a lazily built huge sequence
//! (`[x] * 16` nested, or `l + l` doubled) is refused before anything materializes it.

use std::cell::RefCell;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State, UndefinedBehavior};

/// Bytes an item of a sequence or map is counted as.
const ITEM: usize = 16;

/// The per-render meter.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Bytes built over the render still allowed.
    pub built_left: usize,
    /// Item visits still allowed for measuring.
    pub work_left: usize,
    /// The total allowed (for messages).
    pub max_built: usize,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

/// Removes the meter when the render ends (also on panic or early return).
pub struct Installed(Option<Meter>);

impl Drop for Installed {
    fn drop(&mut self) {
        let previous = self.0.take();
        METER.with(|m| *m.borrow_mut() = previous);
    }
}

impl Meter {
    /// A meter allowing values of `max_value` bytes and `max_built` bytes over the render.
    pub fn new(max_value: usize, max_built: usize) -> Meter {
        Meter { max_value, built_left: max_built, work_left: max_built, max_built }
    }

    /// Makes this meter the current thread's until the guard drops.
    pub fn install(self) -> Installed {
        let previous = METER.with(|m| m.borrow_mut().replace(self));
        Installed(previous)
    }
}

fn too_large(what: &str, max: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "memory limit: {what} would be larger than {max} bytes; the template builds values too large, simplify it"
        ),
    )
}

fn with_meter<T>(f: impl FnOnce(&mut Meter) -> Result<T, Error>) -> Result<T, Error> {
    METER.with(|m| match m.borrow_mut().as_mut() {
        Some(meter) => f(meter),
        None => Err(Error::new(ErrorKind::InvalidOperation, "metered templates render only in the sandbox")),
    })
}

/// Charges `bytes` built.
pub fn charge(bytes: usize) -> Result<(), Error> {
    with_meter(|m| {
        if bytes > m.built_left {
            m.built_left = 0;
            return Err(too_large("everything the template builds", m.max_built));
        }
        m.built_left -= bytes;
        Ok(())
    })
}

/// Checks that a value of `bytes` may be built, and charges it.
pub fn admit(what: &str, bytes: usize) -> Result<(), Error> {
    let max = with_meter(|m| Ok(m.max_value))?;
    if bytes > max {
        return Err(too_large(what, max));
    }
    charge(bytes)
}

/// The size of `v` as text (strings by length, items as [`ITEM`] bytes plus their contents),
/// walking at most until `limit` is passed; each visit spends work.
pub fn size(v: &Value, limit: usize) -> Result<usize, Error> {
    let mut total = 0usize;
    let mut visits = 0usize;
    let r = walk(v, limit, &mut total, &mut visits);
    with_meter(|m| {
        if visits > m.work_left {
            m.work_left = 0;
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("work limit: the template inspects more than {} values; simplify it", m.max_built),
            ));
        }
        m.work_left -= visits;
        Ok(())
    })?;
    r.map(|_| total)
}

fn walk(v: &Value, limit: usize, total: &mut usize, visits: &mut usize) -> Result<(), Error> {
    *visits += 1;
    if *total > limit {
        return Ok(());
    }
    match v.kind() {
        ValueKind::String => *total += v.as_str().map_or(0, str::len),
        ValueKind::Undefined | ValueKind::None | ValueKind::Bool => *total += 4,
        ValueKind::Number => *total += 20,
        ValueKind::Bytes => *total += v.as_bytes().map_or(0, <[u8]>::len),
        ValueKind::Seq | ValueKind::Iterable => {
            *total += ITEM;
            // Unsized iterables (ranges, lazy sequences) are walked too, up to the limit.
            if let Ok(items) = v.try_iter() {
                for item in items {
                    *total += 2;
                    walk(&item, limit, total, visits)?;
                    if *total > limit {
                        return Ok(());
                    }
                }
            }
        }
        ValueKind::Map => {
            *total += ITEM;
            if let Ok(keys) = v.try_iter() {
                for k in keys {
                    *total += 4;
                    walk(&k, limit, total, visits)?;
                    if let Ok(item) = v.get_item(&k) {
                        walk(&item, limit, total, visits)?;
                    }
                    if *total > limit {
                        return Ok(());
                    }
                }
            }
        }
        _ => *total += ITEM,
    }
    Ok(())
}

/// The value cap of the render running on this thread, if any.
pub fn current_max_value() -> Option<usize> {
    METER.with(|m| m.borrow().as_ref().map(|m| m.max_value))
}

fn max_value() -> Result<usize, Error> {
    with_meter(|m| Ok(m.max_value))
}

/// `__odm_in(v)`: a value about to be read whole (a filter or call input, a comparison operand)
/// is at most `max_value` bytes.
pub fn input(v: Value) -> Result<Value, Error> {
    if v.kind() == ValueKind::String {
        return Ok(v);
    }
    let max = max_value()?;
    if size(&v, max)? > max {
        return Err(too_large("a value the template reads", max));
    }
    Ok(v)
}

/// `__odm_out(v)`: a filter or call result is at most `max_value` bytes and is charged for what
/// it holds itself: a string its length, a materialized sequence or map its items (their
/// contents are shared with the inputs, which were measured when read). Lazy iterables (`range`,
/// repeated or concatenated sequences) hold nothing yet: whatever consumes them is measured.
pub fn output(v: Value) -> Result<Value, Error> {
    let n = match v.kind() {
        ValueKind::String => v.as_str().map_or(0, str::len),
        ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len),
        ValueKind::Seq | ValueKind::Map => v.len().unwrap_or(0).saturating_mul(ITEM),
        _ => 0,
    };
    admit("a filter or call result", n)?;
    Ok(v)
}

/// `__odm_emit(v)`: what a template emits (also into `{% set %}` blocks and macros) is charged.
pub fn emit(v: Value) -> Result<Value, Error> {
    let max = max_value()?;
    let n = size(&v, max)?;
    if n > max {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "the template produced more than {max} bytes (the output exceeds the cap): shorten it or its inputs"
            ),
        ));
    }
    charge(n)?;
    Ok(v)
}

fn undefined_check(state: &State<'_, '_>, v: &Value) -> Result<(), Error> {
    if v.is_undefined() && state.undefined_behavior() == UndefinedBehavior::Strict {
        return Err(Error::from(ErrorKind::UndefinedError));
    }
    Ok(())
}

fn sized_len(v: &Value) -> Option<usize> {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable).then(|| v.len()).flatten()
}

/// `__odm_op(op, a, b)`: `~`, `+` and `*` with their results' sizes checked before they are built.
pub fn op(state: &State<'_, '_>, op: &str, a: Value, b: Value) -> Result<Value, Error> {
    let max = max_value()?;
    match op {
        "~" => {
            undefined_check(state, &a)?;
            undefined_check(state, &b)?;
            let n = size(&a, max)?.saturating_add(size(&b, max)?);
            admit("a string built with `~`", n)?;
            Ok(Value::from(format!("{a}{b}")))
        }
        "+" => {
            if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                admit("a string built with `+`", x.len().saturating_add(y.len()))?;
            } else if matches!(a.kind(), ValueKind::Seq | ValueKind::Iterable)
                && matches!(b.kind(), ValueKind::Seq | ValueKind::Iterable)
            {
                // Sequences concatenate lazily; the result is measured as a whole (so doubling a
                // list stops at the limit), and charged for the items it holds.
                let n = size(&a, max)?.saturating_add(size(&b, max)?);
                if n > max {
                    return Err(too_large("a list built with `+`", max));
                }
                let items = sized_len(&a).unwrap_or(0).saturating_add(sized_len(&b).unwrap_or(0));
                charge(items.saturating_mul(ITEM))?;
            }
            binary("+", a, b)
        }
        "*" => {
            let (seq, n) = match (a.as_usize(), b.as_usize()) {
                (_, Some(n)) if !a.is_number() => (&a, n),
                (Some(n), _) if !b.is_number() => (&b, n),
                _ => return binary("*", a, b),
            };
            let unit = if seq.kind() == ValueKind::String { size(seq, max)? } else { size(seq, max)?.max(ITEM) };
            let total = unit.saturating_mul(n);
            admit("a value repeated with `*`", total)?;
            binary("*", a, b)
        }
        other => Err(Error::new(ErrorKind::InvalidOperation, format!("unknown metered operator {other}"))),
    }
}

/// Evaluates `a OP b` with minijinja's own semantics (numbers, strings, lazy sequences).
fn binary(op: &str, a: Value, b: Value) -> Result<Value, Error> {
    use std::sync::OnceLock;
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    static EXPRS: OnceLock<[minijinja::Expression<'static, 'static>; 2]> = OnceLock::new();
    let env = ENV.get_or_init(minijinja::Environment::new);
    let exprs = EXPRS.get_or_init(|| {
        [
            env.compile_expression("a + b").expect("a constant expression"),
            env.compile_expression("a * b").expect("a constant expression"),
        ]
    });
    let e = if op == "+" { &exprs[0] } else { &exprs[1] };
    e.eval(minijinja::context! { a => a, b => b })
}
