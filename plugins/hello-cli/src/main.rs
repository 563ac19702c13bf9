//! A WASI command (world `wasi:cli/command`), not an Eddy operator: the host
//! must refuse it as a plugin with a clear reason.

fn main() {
    println!("hello from a component of another world");
}
