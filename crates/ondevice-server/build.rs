//! Rebuilds the server when a file of the web console (`ui/`) is added, removed or changed: the
//! files are embedded at compile time, and a new file is not otherwise an input cargo tracks.

fn main() {
    println!("cargo:rerun-if-changed=ui");
}
