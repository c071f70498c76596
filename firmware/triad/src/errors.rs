//! Error formatting at the edge: STYLE's rule is that an error's message
//! does not repeat its source's, so the whole chain is joined once, where
//! it is logged or printed.

/// "outer: cause: cause", for one log line or one stderr line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
