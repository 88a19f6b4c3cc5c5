fn main() { eprintln!("usage: cargo xtask <demo|bench>"); }
