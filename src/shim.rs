//! `inarray-shim DIR`: the per-container supervisor (see the `inarray-shim` crate). A bin target
//! of this package so that every build of `inarray` builds it beside the daemon; it links only
//! the shim crate (no async runtime, no HTTP, no SQL).

fn main() {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (Some(dir), None) => inarray_shim::main(std::path::Path::new(&dir)),
        _ => {
            eprintln!("usage: inarray-shim CONTAINER-DIR (started by the inarray daemon)");
            std::process::exit(2);
        }
    }
}
