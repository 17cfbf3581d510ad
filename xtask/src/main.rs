//! `cargo xtask docs`: writes the man pages and shell completions into the repository.

fn main() {
    let task = std::env::args().nth(1).unwrap_or_default();
    if task != "docs" {
        eprintln!("usage: cargo xtask docs   (regenerate doc/man and contrib/completions)");
        std::process::exit(2);
    }
    let root = xtask::repo_root();
    for (path, contents) in xtask::generated_files() {
        let target = root.join(&path);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(&target, contents).unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        println!("wrote {}", path.display());
    }
}
