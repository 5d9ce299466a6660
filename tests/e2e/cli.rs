//! Exit codes and the command line's contract.

use elastos_e2e::Node;

#[test]
fn usage_errors_exit_2() {
    let node = Node::new();
    node.run(&["token", "issue", "--no-such-flag"]).code(2);
    node.run(&["no-such-command"]).code(2);
    node.run(&[]).code(2);
}

#[test]
fn completions_are_generated() {
    let node = Node::new();
    let out = node.run(&["completions", "bash"]);
    assert!(out.ok().contains("elastos"));
}
