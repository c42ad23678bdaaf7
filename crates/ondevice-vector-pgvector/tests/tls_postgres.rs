//! The pgvector backend's TLS (`sslmode` in `[vector] url`) against a real PostgreSQL server's own
//! TLS: Debian's PostgreSQL (package `postgresql`, installed by `scripts/prereqs.sh test`), started
//! by the test on 127.0.0.1 as the `postgres` user with a CA and a server certificate the test
//! makes with `rcgen`. (pgserver's PostgreSQL, which the contract suite uses, is built without
//! OpenSSL and cannot serve TLS.)
//!
//! - TLS off on the server, `sslmode=require`: refused with an error saying the server does not
//!   support TLS (never a plain-text fallback).
//! - TLS on (`ssl = on`, reloaded): `sslmode=require` and `sslmode=verify-full` with the test's CA
//!   in `sslrootcert` connect: the crate's connector reaches `pg_stat_ssl` showing TLS, and the
//!   backend gets through the handshake, startup and authentication (the server logs
//!   `SSL enabled` for it) to its schema step. This server has no pgvector extension (Debian 12
//!   does not package it), so that step ends with the server's error about `vector.control`
//!   (`postgresql error 0A000` in the backend's message, with the server's detail): the one error
//!   a connection that worked can give here.
//! - Another CA in `sslrootcert`, or none (the Mozilla roots): refused with the certificate's
//!   unknown issuer in the message, before any SQL.
//!
//! Without Debian's PostgreSQL the test skips with a note, except under CI (`CI` set), where it
//! fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use ondevice_vector_pgvector::{PgVectorBackend, tls};

/// Debian's server binaries (`/usr/lib/postgresql/<version>/bin`), newest version first.
fn server_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

/// `(uid, gid)` of the `postgres` account, which the server runs as when the test runs as root
/// (PostgreSQL refuses to run as root).
fn postgres_account() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres")).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(cert_pem: &str, key_pem: &str) -> Option<Server> {
        let Some(bin) = server_bin() else {
            assert!(std::env::var_os("CI").is_none(), "install Debian's postgresql (scripts/prereqs.sh test does)");
            eprintln!(
                "note: no /usr/lib/postgresql/*/bin/postgres (apt-get install postgresql); skipping the TLS test"
            );
            return None;
        };
        let account =
            if is_root() { Some(postgres_account().expect("a postgres account (Debian's package)")) } else { None };
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let chown = |p: &Path| {
            if let Some((uid, gid)) = account {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&data);
        let command = |program: &Path| {
            #[allow(clippy::disallowed_methods)] // the test's own PostgreSQL, a real peer
            let mut c = std::process::Command::new(program);
            if let Some((uid, gid)) = account {
                use std::os::unix::process::CommandExt;
                c.uid(uid).gid(gid);
            }
            c
        };
        let out = command(&bin.join("initdb"))
            .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let p = data.join(name);
            std::fs::write(&p, pem).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown(&p);
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = command(&bin.join("postgres"))
            .args(["-D", data.to_str().unwrap(), "-p", &port.to_string(), "-k", data.to_str().unwrap()])
            // TLS starts off (the default; not on the command line, which would override ALTER SYSTEM).
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "log_connections=on"])
            .args(["-c", "fsync=off", "-c", "shared_buffers=16MB", "-c", "max_connections=20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        Some(Server { child, port, log, dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, host: &str, extra: &str) -> String {
        format!("host={host} port={} user=postgres dbname=postgres connect_timeout=10 {extra}", self.port)
    }

    /// A plain client (TLS not asked for) for the test's own statements.
    async fn plain(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            self.url("127.0.0.1", "").parse::<tokio_postgres::Config>()?.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    async fn ready(&self) -> tokio_postgres::Client {
        let started = std::time::Instant::now();
        loop {
            match self.plain().await {
                Ok(c) => return c,
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("PostgreSQL did not start: {e}\n{}", self.log()),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM by pid (the server's own child processes follow it): a "smart" shutdown.
        #[allow(clippy::disallowed_methods)]
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

/// A CA and a server certificate for `localhost` signed by it, as PEM: (ca, cert, key).
fn certificates(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Connects through the crate's own TLS settings and connector and asks the server about the
/// connection: `(ssl, version)` from `pg_stat_ssl`.
async fn tls_session(url: &str) -> Result<(bool, String), String> {
    let settings = tls::parse(url).map_err(|e| e.to_string())?;
    assert_eq!(settings.mode, tls::SslMode::Verify);
    let mut config: tokio_postgres::Config = settings.conninfo.parse().map_err(|e| format!("{e}"))?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let connector = tls::connector(settings.root_cert.as_deref()).map_err(|e| e.to_string())?;
    let (client, conn) = config.connect(connector).await.map_err(|e| format!("{e:?}"))?;
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_against_postgres_with_and_without_tls() {
    let (ca, cert, key) = certificates("ondevice test CA");
    let (other_ca, _, _) = certificates("another CA");
    let Some(server) = Server::start(&cert, &key) else { return };
    let files = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (files.path().join("ca.pem"), files.path().join("other-ca.pem"));
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&other_file, &other_ca).unwrap();
    let admin = server.ready().await;

    // TLS off: sslmode=require is refused, whatever sslrootcert says.
    let url = server.url("localhost", &format!("sslmode=require sslrootcert='{}'", ca_file.display()));
    let e = PgVectorBackend::connect(&url, 1).await.unwrap_err().to_string();
    println!("TLS off, sslmode=require: {e}");
    assert!(e.contains("server does not support TLS"), "{e}");

    // TLS on, without a restart: ssl is reloadable.
    admin.batch_execute("ALTER SYSTEM SET ssl = on").await.unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let on: String = server.plain().await.unwrap().query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "ssl did not turn on:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for mode in ["require", "verify-full"] {
        let url = server.url("localhost", &format!("sslmode={mode} sslrootcert='{}'", ca_file.display()));
        let (ssl, version) =
            tls_session(&url).await.unwrap_or_else(|e| panic!("sslmode={mode}: {e}\n{}", server.log()));
        assert!(ssl, "sslmode={mode}: pg_stat_ssl says the connection is not TLS");
        println!("sslmode={mode} with the CA: TLS {version}");
        let before = server.log().matches("SSL enabled").count();
        let e = PgVectorBackend::connect(&url, 1).await.unwrap_err().to_string();
        // The server's own error (this server has no pgvector) reaches the user, over TLS.
        assert!(e.contains("postgresql error 0A000") && e.contains("vector.control"), "sslmode={mode}: {e}");
        assert!(server.log().contains("vector.control"), "sslmode={mode}: {e}\n{}", server.log());
        assert!(server.log().matches("SSL enabled").count() > before, "no TLS connection logged:\n{}", server.log());
    }
    // The same in URL form.
    let url = format!(
        "postgresql://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port,
        ca_file.display()
    );
    assert!(tls_session(&url).await.unwrap().0);

    // A CA that did not sign the server's certificate, or none (the Mozilla roots): refused.
    for extra in [format!("sslmode=verify-full sslrootcert='{}'", other_file.display()), "sslmode=require".to_owned()] {
        let e = PgVectorBackend::connect(&server.url("localhost", &extra), 1).await.unwrap_err().to_string();
        println!("{extra}: {e}");
        assert!(e.contains("invalid peer certificate") && e.contains("UnknownIssuer"), "{extra}: {e}");
    }
    // The certificate names localhost, not 127.0.0.1.
    let url = server.url("127.0.0.1", &format!("sslmode=verify-full sslrootcert='{}'", ca_file.display()));
    let e = PgVectorBackend::connect(&url, 1).await.unwrap_err().to_string();
    assert!(e.contains("certificate not valid for name"), "{e}");

    // Plain connections still work on the TLS server when the URL does not ask for TLS.
    let ssl: bool =
        admin.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(!ssl);
}
