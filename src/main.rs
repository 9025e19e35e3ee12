fn main() {
    std::process::exit(kvscope::cli::main());
}
