fn main() {
    println!("elastos {}", env!("CARGO_PKG_VERSION"));
}
