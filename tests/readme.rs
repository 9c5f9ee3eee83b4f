//! The README's example is the crate documentation's first example, word for
//! word: the doctest of one runs the other, so neither can drift.

fn first_rust_block(markdown: &str) -> String {
    let mut lines = markdown.lines().skip_while(|l| l.trim() != "```rust");
    lines.next().expect("a ```rust block");
    lines
        .take_while(|l| l.trim() != "```")
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn readme_example_is_the_crate_docs_example() {
    let readme = include_str!("../README.md");
    let lib_docs: String = include_str!("../src/lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replacen("\n```\n", "\n```rust\n", 1);
    let ours = first_rust_block(&lib_docs);
    assert!(
        ours.lines().count() > 5,
        "the crate docs lost their example"
    );
    assert_eq!(
        first_rust_block(readme),
        ours,
        "README.md and src/lib.rs examples differ"
    );
}

#[test]
fn readme_gives_the_two_commands() {
    let readme = include_str!("../README.md");
    assert!(readme.contains("cargo run --release --example shopping_cart"));
    assert!(readme.contains("cargo test --all-features"));
}
