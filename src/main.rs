fn main() {
    std::process::exit(imgblk::cli::main())
}
