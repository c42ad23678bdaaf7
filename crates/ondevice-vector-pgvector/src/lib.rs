//! The PostgreSQL + pgvector backend (`[vector] backend = "pgvector"`, `url = "env:VAR"`).
//!
//! Tables (created at connect, idempotent): `ondevice_collections` (name, spec as JSONB),
//! `ondevice_documents` (metadata as JSONB, content hash) and one `ondevice_chunks_<id>` table per
//! collection with a `vector(dimension)` column and an HNSW index (pgvector) built with the
//! collection's `m`/`ef_construction` and the operator class of its distance. Every write is one
//! transaction: committed means durable.
//!
//! Chunks go in with `COPY ... (FORMAT binary)` (pgvector's binary vector form, no float text to
//! print and parse). A write of at least [`BULK_MIN_CHUNKS`] chunks into an empty collection is a
//! bulk load: in the same transaction the HNSW index is dropped, the rows are copied and the index
//! is built over all of them at once, with `maintenance_work_mem` raised (for that transaction
//! only) so the graph fits in memory, as pgvector advises ("it's faster to create an index after
//! loading your initial data"); building the graph in one pass, on the server's parallel
//! maintenance workers, is several times faster than inserting 100k rows into it one by one.
//! Queries on that collection wait for the load to commit (it held no rows before).
//!
//! Filters are JSONB containment (`metadata @> '{"k": v}'`). pgvector filters after the index scan,
//! so a selective filter can return fewer than `k` rows from the HNSW scan: then the query runs
//! again as an exact scan of the chunks passing the filter, and `k` come back whenever `k` pass.

#![warn(missing_docs)]

pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use ondevice_vector::{
    BoxFuture, CollectionRecord, CollectionSpec, Distance, DocumentWrite, Filter, Hit, Metadata, StoredDocument,
    VectorBackend, VectorError, VectorQuery, check_vector, validate_document_id, validate_query,
};
use tokio::sync::Mutex;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

/// The backend's name.
pub const BACKEND: &str = "pgvector";

const SCHEMA: &str = "CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE IF NOT EXISTS ondevice_collections (
        id         BIGSERIAL PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        spec       JSONB NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS ondevice_documents (
        collection_id BIGINT NOT NULL REFERENCES ondevice_collections (id) ON DELETE CASCADE,
        doc_id        TEXT NOT NULL,
        source        TEXT,
        content_hash  TEXT NOT NULL,
        metadata      JSONB NOT NULL DEFAULT '{}',
        updated_at    BIGINT NOT NULL,
        PRIMARY KEY (collection_id, doc_id)
    );
    CREATE INDEX IF NOT EXISTS ondevice_documents_metadata ON ondevice_documents USING gin (metadata jsonb_path_ops);";

/// A PostgreSQL failure in words a user can act on. tokio-postgres shows a server error as a bare
/// "db error" (the server's message, SQLSTATE, detail and hint are in its source) and other
/// failures without their cause (a TLS failure's reason, such as an unknown certificate issuer, is
/// only in the source chain); this spells them out.
#[derive(Debug)]
pub struct PgError {
    message: String,
    code: Option<String>,
}

impl PgError {
    /// The server's SQLSTATE code (`42P01`, ...), when the server reported the error.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PgError {}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code().to_owned();
            let mut message = format!("postgresql error {code}: {}", db.message());
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" (hint: {hint})"));
            }
            return PgError { message, code: Some(code) };
        }
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        PgError { message, code: None }
    }
}

fn pg_err(e: tokio_postgres::Error) -> VectorError {
    VectorError::backend(BACKEND, PgError::from(e))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `[1,2,3]`, pgvector's text form.
fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// A write of at least this many chunks into an empty collection loads the rows first and builds
/// the HNSW index after them (see the module docs).
pub const BULK_MIN_CHUNKS: usize = 1000;

/// The most `maintenance_work_mem` a bulk load asks for (the server's own setting wins when higher).
const BULK_MAX_MEMORY_KB: u64 = 4 << 20;

/// `maintenance_work_mem` (kB) that holds pgvector's in-memory HNSW graph for `chunks` vectors of
/// `dimension` with `m` links: the vector, the neighbour lists of layer 0 (2m) and above, the
/// element itself; with a margin, as pgvector warns and slows down when the graph does not fit.
fn bulk_memory_kb(chunks: usize, dimension: u32, m: u32) -> u64 {
    let per_element = 4 * u64::from(dimension) + 8 + 3 * u64::from(m) * 16 + 256;
    ((chunks as u64 * per_element * 3 / 2) / 1024).clamp(64 << 10, BULK_MAX_MEMORY_KB)
}

/// A vector in pgvector's binary form (`vector_send`/`vector_recv`): dimension and an unused
/// field as 16-bit integers, then the elements as big-endian 32-bit floats.
#[derive(Debug)]
struct BinaryVector<'a>(&'a [f32]);

impl ToSql for BinaryVector<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        let dim = u16::try_from(self.0.len()).map_err(|_| "vector has more than 65535 dimensions")?;
        out.reserve(4 + 4 * self.0.len());
        out.put_u16(dim);
        out.put_u16(0);
        for x in self.0 {
            out.put_f32(*x);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector"
    }

    to_sql_checked!();
}

fn chunks_table(id: i64) -> String {
    format!("ondevice_chunks_{id}")
}

/// `CREATE INDEX` of a collection's HNSW index (on its chunks table `t`).
fn hnsw_index_sql(t: &str, spec: &CollectionSpec) -> String {
    let (_, ops) = distance_sql(spec.distance);
    format!(
        "CREATE INDEX {t}_hnsw ON {t} USING hnsw (embedding {ops}) WITH (m = {m}, ef_construction = {efc});",
        m = spec.index.m.clamp(2, 100),
        efc = spec.index.ef_construction.clamp(4, 1000),
    )
}

/// The SQL distance expression for `distance` (smaller is closer), and the index operator class.
fn distance_sql(d: Distance) -> (&'static str, &'static str) {
    match d {
        Distance::Cosine => ("c.embedding <=> $1::text::vector", "vector_cosine_ops"),
        Distance::Dot => ("c.embedding <#> $1::text::vector", "vector_ip_ops"),
        Distance::L2 => ("c.embedding <-> $1::text::vector", "vector_l2_ops"),
    }
}

/// pgvector's value → the contract's distance (1 − dot for dot, squared for L2).
fn contract_distance(d: Distance, raw: f64) -> f32 {
    match d {
        Distance::Cosine => raw as f32,
        Distance::Dot => (1.0 + raw) as f32,
        Distance::L2 => (raw * raw) as f32,
    }
}

/// The filter as SQL over `d.metadata` with its JSON parameters, numbered from `first`.
fn filter_sql(filter: &Filter, first: usize) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut args = Vec::new();
    for (key, values) in &filter.conditions {
        let alts: Vec<String> = values
            .iter()
            .map(|v| {
                args.push(serde_json::json!({ key.as_str(): v.to_json() }).to_string());
                format!("d.metadata @> ${}::text::jsonb", first + args.len() - 1)
            })
            .collect();
        sql.push_str(&format!(" AND ({})", alts.join(" OR ")));
    }
    (sql, args)
}

/// The pgvector backend: a few connections used in turn.
pub struct PgVectorBackend {
    clients: Vec<Mutex<Client>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for PgVectorBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgVectorBackend").field("connections", &self.clients.len()).finish_non_exhaustive()
    }
}

struct Row {
    id: i64,
    spec: CollectionSpec,
}

impl PgVectorBackend {
    /// Connects `connections` times (1-16) with a libpq-style connection string
    /// (`host=/run/postgresql user=me dbname=db` or `postgresql://user@host/db`) and creates the
    /// schema if needed.
    ///
    /// `sslmode=require` or `verify-full` (also `verify-ca`) in the string makes the connection
    /// TLS with the server's certificate and host name verified, or fails (see [`tls`]).
    pub async fn connect(url: &str, connections: usize) -> Result<PgVectorBackend, VectorError> {
        let settings = tls::parse(url)?;
        let mut config: tokio_postgres::Config = settings.conninfo.parse().map_err(pg_err)?;
        let connector = match settings.mode {
            tls::SslMode::Disable => None,
            tls::SslMode::Verify => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls::connector(settings.root_cert.as_deref())?)
            }
        };
        // Each TCP host passes the egress gate: offline mode refuses a remote server, and the
        // ledger records the connection. A Unix socket is local and is not egress.
        let ports = config.get_ports().to_vec();
        let mut flows = Vec::new();
        for (i, host) in config.get_hosts().iter().enumerate() {
            if let tokio_postgres::config::Host::Tcp(h) = host {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                let flow = ondevice_egress::begin(ondevice_egress::Purpose::VectorStore, h, port)
                    .map_err(|e| VectorError::BackendUnavailable(e.to_string()))?;
                flows.push(flow);
            }
        }
        let failed = |e: tokio_postgres::Error| {
            let e = pg_err(e);
            for f in &flows {
                f.failed(&e);
            }
            e
        };
        let mut clients = Vec::new();
        for _ in 0..connections.clamp(1, 16) {
            let client = match &connector {
                None => {
                    let (client, conn) = config.connect(NoTls).await.map_err(failed)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::warn!(error = %e, "pgvector connection closed");
                        }
                    });
                    client
                }
                Some(tls) => {
                    let (client, conn) = config.connect(tls.clone()).await.map_err(failed)?;
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::warn!(error = %e, "pgvector connection closed");
                        }
                    });
                    client
                }
            };
            clients.push(Mutex::new(client));
        }
        let backend = PgVectorBackend { clients, next: AtomicUsize::new(0) };
        {
            let c = backend.client().await;
            // Concurrent first starts race on CREATE EXTENSION; one transaction-level lock orders them.
            c.batch_execute(&format!("SELECT pg_advisory_lock(7733); {SCHEMA} SELECT pg_advisory_unlock(7733);"))
                .await
                .map_err(pg_err)?;
        }
        Ok(backend)
    }

    async fn client(&self) -> tokio::sync::MutexGuard<'_, Client> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[i].lock().await
    }

    async fn row(c: &impl GenericClient, name: &str) -> Result<Option<Row>, VectorError> {
        let r = c
            .query_opt("SELECT id, spec::text FROM ondevice_collections WHERE name = $1", &[&name])
            .await
            .map_err(pg_err)?;
        match r {
            None => Ok(None),
            Some(r) => {
                let mut spec: CollectionSpec = serde_json::from_str(r.get::<_, &str>(1))
                    .map_err(|e| VectorError::backend(BACKEND, format!("collection {name:?}: unreadable spec: {e}")))?;
                spec.name = name.to_owned();
                Ok(Some(Row { id: r.get(0), spec }))
            }
        }
    }

    async fn need(c: &impl GenericClient, name: &str) -> Result<Row, VectorError> {
        Self::row(c, name).await?.ok_or_else(|| VectorError::NotFound(name.to_owned()))
    }

    async fn record(c: &impl GenericClient, row: Row, created_at: i64) -> Result<CollectionRecord, VectorError> {
        let t = chunks_table(row.id);
        let counts = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM ondevice_documents WHERE collection_id = $1),
                            (SELECT count(*) FROM {t}),
                            (SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0)::bigint FROM pg_index i
                             WHERE i.indrelid = '{t}'::regclass)"
                ),
                &[&row.id],
            )
            .await
            .map_err(pg_err)?;
        Ok(CollectionRecord {
            spec: row.spec,
            backend: BACKEND,
            documents: counts.get::<_, i64>(0) as u64,
            chunks: counts.get::<_, i64>(1) as u64,
            index_bytes: Some(counts.get::<_, i64>(2) as u64),
            created_at,
        })
    }

    async fn delete_rows(tx: &Transaction<'_>, id: i64) -> Result<(), VectorError> {
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", chunks_table(id))).await.map_err(pg_err)?;
        tx.execute("DELETE FROM ondevice_collections WHERE id = $1", &[&id]).await.map_err(pg_err)?;
        Ok(())
    }

    async fn create(&self, spec: &CollectionSpec) -> Result<CollectionRecord, VectorError> {
        ondevice_vector::validate_stored_name(&spec.name)?;
        if spec.dimension == 0 || spec.dimension > 2000 {
            return Err(VectorError::InvalidRequest(format!(
                "dimension {} is out of range: pgvector indexes 1 to 2000 dimensions",
                spec.dimension
            )));
        }
        let json = serde_json::to_string(spec).map_err(|e| VectorError::backend(BACKEND, e))?;
        let mut c = self.client().await;
        let tx = c.transaction().await.map_err(pg_err)?;
        let created = now();
        let id: Option<i64> = tx
            .query_opt(
                "INSERT INTO ondevice_collections (name, spec, created_at) VALUES ($1, $2::text::jsonb, $3)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&spec.name, &json, &created],
            )
            .await
            .map_err(pg_err)?
            .map(|r| r.get(0));
        let Some(id) = id else { return Err(VectorError::Exists(spec.name.clone())) };
        let t = chunks_table(id);
        tx.batch_execute(&format!(
            "CREATE TABLE {t} (
                id        BIGSERIAL PRIMARY KEY,
                doc_id    TEXT NOT NULL,
                seq       INTEGER NOT NULL,
                text      TEXT NOT NULL,
                embedding vector({dim}) NOT NULL
            );
            CREATE INDEX {t}_doc ON {t} (doc_id);
            {hnsw}",
            dim = spec.dimension,
            hnsw = hnsw_index_sql(&t, spec),
        ))
        .await
        .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        let row = Row { id, spec: spec.clone() };
        Self::record(&*c, row, created).await
    }

    async fn upsert_docs(&self, name: &str, docs: Vec<DocumentWrite>) -> Result<(), VectorError> {
        let mut c = self.client().await;
        let row = Self::need(&*c, name).await?;
        let t = chunks_table(row.id);
        let (mut ids, mut sources, mut hashes, mut metas) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut chunks = 0usize;
        for d in &docs {
            validate_document_id(&d.id)?;
            for ch in &d.chunks {
                check_vector(&row.spec, &ch.embedding)?;
            }
            chunks += d.chunks.len();
            ids.push(d.id.clone());
            sources.push(d.source.clone());
            hashes.push(d.content_hash.clone());
            metas.push(serde_json::Value::Object(d.metadata.clone()).to_string());
        }
        // The `vector` type as this server knows it (an extension type: its OID varies).
        let vector_type = c.prepare("SELECT $1::vector").await.map_err(pg_err)?.params()[0].clone();
        let tx = c.transaction().await.map_err(pg_err)?;
        let mut bulk = false;
        if chunks >= BULK_MIN_CHUNKS {
            // Writers of this collection take turns from here (readers go on); so two big first
            // writes cannot both drop the index and deadlock upgrading their locks.
            tx.batch_execute(&format!("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE")).await.map_err(pg_err)?;
            bulk = tx.query_one(&format!("SELECT NOT EXISTS (SELECT 1 FROM {t})"), &[]).await.map_err(pg_err)?.get(0);
        }
        tx.execute(&format!("DELETE FROM {t} WHERE doc_id = ANY($1)"), &[&ids]).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO ondevice_documents (collection_id, doc_id, source, content_hash, metadata, updated_at)
             SELECT $1, u.doc_id, u.source, u.hash, u.meta::jsonb, $6
             FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u (doc_id, source, hash, meta)
             ON CONFLICT (collection_id, doc_id) DO UPDATE SET source = excluded.source,
                content_hash = excluded.content_hash, metadata = excluded.metadata, updated_at = excluded.updated_at",
            &[&row.id, &ids, &sources, &hashes, &metas, &now()],
        )
        .await
        .map_err(pg_err)?;
        if bulk {
            tx.batch_execute(&format!("DROP INDEX IF EXISTS {t}_hnsw")).await.map_err(pg_err)?;
        }
        let sink = tx
            .copy_in(&format!("COPY {t} (doc_id, seq, text, embedding) FROM STDIN (FORMAT binary)"))
            .await
            .map_err(pg_err)?;
        let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::INT4, Type::TEXT, vector_type]);
        let mut writer = std::pin::pin!(writer);
        for d in &docs {
            for (i, ch) in d.chunks.iter().enumerate() {
                let seq = i as i32;
                writer.as_mut().write(&[&d.id, &seq, &ch.text, &BinaryVector(&ch.embedding)]).await.map_err(pg_err)?;
            }
        }
        writer.finish().await.map_err(pg_err)?;
        if bulk {
            let kb = bulk_memory_kb(chunks, row.spec.dimension, row.spec.index.m);
            tx.query_one(
                "SELECT set_config('maintenance_work_mem',
                    greatest(pg_size_bytes(current_setting('maintenance_work_mem')) / 1024, $1::bigint)::text, true)",
                &[&(kb as i64)],
            )
            .await
            .map_err(pg_err)?;
            tx.batch_execute(&hnsw_index_sql(&t, &row.spec)).await.map_err(pg_err)?;
        }
        tx.commit().await.map_err(pg_err)
    }

    async fn delete_docs(&self, name: &str, ids: &[String]) -> Result<u64, VectorError> {
        let mut c = self.client().await;
        let row = Self::need(&*c, name).await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.execute(&format!("DELETE FROM {} WHERE doc_id = ANY($1)", chunks_table(row.id)), &[&ids])
            .await
            .map_err(pg_err)?;
        let n = tx
            .execute("DELETE FROM ondevice_documents WHERE collection_id = $1 AND doc_id = ANY($2)", &[&row.id, &ids])
            .await
            .map_err(pg_err)?;
        tx.commit().await.map_err(pg_err)?;
        Ok(n)
    }

    async fn run_query(&self, name: &str, q: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        let mut c = self.client().await;
        let row = Self::need(&*c, name).await?;
        validate_query(&row.spec, q)?;
        let t = chunks_table(row.id);
        let (dist, _) = distance_sql(row.spec.distance);
        let (fsql, fargs) = filter_sql(&q.filter, 4);
        let sql = format!(
            "SELECT d.doc_id, c.seq, c.text, d.source, d.metadata::text, ({dist})::float8 AS distance
             FROM {t} c JOIN ondevice_documents d ON d.collection_id = $2 AND d.doc_id = c.doc_id
             WHERE true {fsql} ORDER BY {dist} LIMIT $3"
        );
        let vector = vector_literal(&q.vector);
        let k = q.k as i64;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&vector, &row.id, &k];
        for a in &fargs {
            params.push(a);
        }
        let ef = (row.spec.index.ef_search as usize).max(q.k).min(1000);
        let tx = c.transaction().await.map_err(pg_err)?;
        tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}")).await.map_err(pg_err)?;
        let mut rows = tx.query(&sql, &params).await.map_err(pg_err)?;
        if rows.len() < q.k && !q.filter.is_empty() {
            // The index scan ran out before k rows passed the filter: scan exactly if more pass.
            let count_sql = format!(
                "SELECT count(*) FROM {t} c JOIN ondevice_documents d ON d.collection_id = $1 AND d.doc_id = c.doc_id
                 WHERE true {}",
                filter_sql(&q.filter, 2).0
            );
            let mut cparams: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&row.id];
            for a in &fargs {
                cparams.push(a);
            }
            let passing: i64 = tx.query_one(&count_sql, &cparams).await.map_err(pg_err)?.get(0);
            if passing as usize > rows.len() {
                tx.batch_execute("SET LOCAL enable_indexscan = off").await.map_err(pg_err)?;
                rows = tx.query(&sql, &params).await.map_err(pg_err)?;
            }
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let d = contract_distance(row.spec.distance, r.get::<_, f64>(5));
                let metadata: Metadata = serde_json::from_str(r.get::<_, &str>(4)).unwrap_or_default();
                Hit {
                    document_id: r.get(0),
                    chunk: r.get::<_, i32>(1) as u32,
                    text: r.get(2),
                    source: r.get(3),
                    metadata,
                    score: row.spec.distance.score(d),
                    distance: d,
                }
            })
            .collect())
    }
}

impl VectorBackend for PgVectorBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn create_collection<'a>(
        &'a self,
        spec: &'a CollectionSpec,
    ) -> BoxFuture<'a, Result<CollectionRecord, VectorError>> {
        Box::pin(self.create(spec))
    }

    fn collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<CollectionRecord>, VectorError>> {
        Box::pin(async move {
            let c = self.client().await;
            let created: Option<i64> = c
                .query_opt("SELECT created_at FROM ondevice_collections WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
            match (Self::row(&*c, name).await?, created) {
                (Some(row), Some(created)) => Self::record(&*c, row, created).await.map(Some),
                _ => Ok(None),
            }
        })
    }

    fn collections(&self) -> BoxFuture<'_, Result<Vec<CollectionRecord>, VectorError>> {
        Box::pin(async move {
            let c = self.client().await;
            let rows = c
                .query("SELECT name, created_at FROM ondevice_collections ORDER BY name", &[])
                .await
                .map_err(pg_err)?;
            let mut out = Vec::new();
            for r in rows {
                let name: String = r.get(0);
                if let Some(row) = Self::row(&*c, &name).await? {
                    out.push(Self::record(&*c, row, r.get(1)).await?);
                }
            }
            Ok(out)
        })
    }

    fn delete_collection<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, VectorError>> {
        Box::pin(async move {
            let mut c = self.client().await;
            let Some(row) = Self::row(&*c, name).await? else { return Ok(false) };
            let tx = c.transaction().await.map_err(pg_err)?;
            Self::delete_rows(&tx, row.id).await?;
            tx.commit().await.map_err(pg_err)?;
            Ok(true)
        })
    }

    fn replace_collection<'a>(&'a self, from: &'a str, to: &'a str) -> BoxFuture<'a, Result<(), VectorError>> {
        Box::pin(async move {
            let mut c = self.client().await;
            let tx = c.transaction().await.map_err(pg_err)?;
            let incoming = Self::need(&tx, from).await?;
            if let Some(old) = Self::row(&tx, to).await? {
                Self::delete_rows(&tx, old.id).await?;
            }
            let mut spec = incoming.spec;
            spec.name = to.to_owned();
            let json = serde_json::to_string(&spec).map_err(|e| VectorError::backend(BACKEND, e))?;
            tx.execute(
                "UPDATE ondevice_collections SET name = $2, spec = $3::text::jsonb WHERE id = $1",
                &[&incoming.id, &to, &json],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)
        })
    }

    fn upsert<'a>(&'a self, collection: &'a str, docs: Vec<DocumentWrite>) -> BoxFuture<'a, Result<(), VectorError>> {
        Box::pin(self.upsert_docs(collection, docs))
    }

    fn delete_documents<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<u64, VectorError>> {
        Box::pin(self.delete_docs(collection, ids))
    }

    fn content_hashes<'a>(
        &'a self,
        collection: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<HashMap<String, String>, VectorError>> {
        Box::pin(async move {
            let c = self.client().await;
            let row = Self::need(&*c, collection).await?;
            let rows = c
                .query(
                    "SELECT doc_id, content_hash FROM ondevice_documents WHERE collection_id = $1 AND doc_id = ANY($2)",
                    &[&row.id, &ids],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn documents_page<'a>(
        &'a self,
        collection: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredDocument>, VectorError>> {
        Box::pin(async move {
            let c = self.client().await;
            let row = Self::need(&*c, collection).await?;
            let t = chunks_table(row.id);
            let rows = c
                .query(
                    &format!(
                        "SELECT d.doc_id, d.source, d.content_hash, d.metadata::text,
                                coalesce((SELECT array_agg(c.text ORDER BY c.seq) FROM {t} c WHERE c.doc_id = d.doc_id),
                                         ARRAY[]::text[])
                         FROM ondevice_documents d WHERE d.collection_id = $1 AND d.doc_id COLLATE \"C\" > $2
                         ORDER BY d.doc_id COLLATE \"C\" LIMIT $3"
                    ),
                    &[&row.id, &after.unwrap_or(""), &(limit as i64)],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .into_iter()
                .map(|r| StoredDocument {
                    id: r.get(0),
                    source: r.get(1),
                    content_hash: r.get(2),
                    metadata: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
                    chunks: r.get(4),
                })
                .collect())
        })
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a VectorQuery,
    ) -> BoxFuture<'a, Result<Vec<Hit>, VectorError>> {
        Box::pin(self.run_query(collection, query))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), VectorError>> {
        Box::pin(async { Ok(()) })
    }
}
