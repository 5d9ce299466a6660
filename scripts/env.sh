# Sourced by the scripts: one build directory outside the clone, reused across clones and runs
# (a fresh CI clone then pays the cold build only once per machine).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/elastos/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
