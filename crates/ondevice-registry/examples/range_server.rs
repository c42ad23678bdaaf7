//! Serves one file over HTTP with Range support on 127.0.0.1 (for `scripts/bench-pull.sh`):
//! prints the file's URL, then serves until killed. `range_server FILE`.

#[path = "../tests/support/range_server.rs"]
mod range_server;

#[tokio::main]
async fn main() {
    let Some(file) = std::env::args_os().nth(1) else {
        eprintln!("usage: range_server FILE");
        std::process::exit(2);
    };
    let server = range_server::RangeServer::start().await;
    server.put("/model.gguf", range_server::Served::file(file.into()));
    println!("{}", server.url("/model.gguf"));
    std::future::pending::<()>().await;
}
