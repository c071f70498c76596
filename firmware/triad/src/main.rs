//! `triad`: the supervisor binary (being written).
fn main() {}
