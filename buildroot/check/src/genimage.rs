//! A reader for genimage's configuration syntax (libconfuse), enough for
//! the layout check: sections `kind ["title"] { ... }`, options
//! `key = value`, `#` comments. Not a validator of genimage's options:
//! `tests/tree.rs` runs genimage itself for that.

/// One section: `image disk.img { ... }`, `partition esp { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// `image`, `hdimage`, `partition`, `vfat`, `file`...
    pub kind: String,
    /// The name after the kind, if any (`disk.img`, `esp`).
    pub title: Option<String>,
    /// `key = value` pairs in order, values unquoted.
    pub options: Vec<(String, String)>,
    /// Nested sections in order.
    pub children: Vec<Section>,
}

impl Section {
    /// The value of option `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Children of one kind, in order.
    pub fn all<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.children.iter().filter(move |c| c.kind == kind)
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    Equals,
}

fn tokens(text: &str) -> Result<Vec<(usize, Token)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let mut chars = line.chars().peekable();
        while let Some(&c) = chars.peek() {
            match c {
                '#' => break,
                c if c.is_whitespace() => {
                    chars.next();
                }
                '{' | '}' | '=' => {
                    chars.next();
                    out.push((
                        lineno,
                        if c == '{' {
                            Token::Open
                        } else if c == '}' {
                            Token::Close
                        } else {
                            Token::Equals
                        },
                    ));
                }
                '"' => {
                    chars.next();
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some(c) => s.push(c),
                            None => return Err(format!("line {lineno}: unterminated string")),
                        }
                    }
                    out.push((lineno, Token::Word(s)));
                }
                _ => {
                    let mut s = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || matches!(c, '{' | '}' | '=' | '#' | '"') {
                            break;
                        }
                        s.push(c);
                        chars.next();
                    }
                    out.push((lineno, Token::Word(s)));
                }
            }
        }
    }
    Ok(out)
}

/// Parses a whole file into its top-level sections.
pub fn parse(text: &str) -> Result<Vec<Section>, String> {
    let toks = tokens(text)?;
    let mut pos = 0;
    let top = body(&toks, &mut pos, 0)?;
    if let Some((line, t)) = toks.get(pos) {
        return Err(format!("line {line}: unexpected {t:?}"));
    }
    Ok(top.children)
}

fn body(toks: &[(usize, Token)], pos: &mut usize, depth: usize) -> Result<Section, String> {
    let mut sec = Section { kind: String::new(), title: None, options: vec![], children: vec![] };
    loop {
        match toks.get(*pos) {
            None if depth == 0 => return Ok(sec),
            None => return Err("end of file inside a section (missing `}`)".into()),
            Some((_, Token::Close)) if depth > 0 => {
                *pos += 1;
                return Ok(sec);
            }
            Some((line, Token::Word(w))) => {
                let w = w.clone();
                match (toks.get(*pos + 1), toks.get(*pos + 2), toks.get(*pos + 3)) {
                    (Some((_, Token::Equals)), Some((_, Token::Word(v))), _) => {
                        sec.options.push((w, v.clone()));
                        *pos += 3;
                    }
                    (Some((_, Token::Open)), _, _) => {
                        *pos += 2;
                        let mut child = body(toks, pos, depth + 1)?;
                        child.kind = w;
                        sec.children.push(child);
                    }
                    (Some((_, Token::Word(title))), Some((_, Token::Open)), _) => {
                        let title = title.clone();
                        *pos += 3;
                        let mut child = body(toks, pos, depth + 1)?;
                        child.kind = w;
                        child.title = Some(title);
                        sec.children.push(child);
                    }
                    _ => return Err(format!("line {line}: `{w}` is neither `key = value` nor a section")),
                }
            }
            Some((line, t)) => return Err(format!("line {line}: unexpected {t:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_options_and_titles() {
        let text = "# c\nimage a.img {\n hdimage { x = \"1\" }\n partition p1 { size = 4M # c\n }\n}\n";
        let top = parse(text).unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].title.as_deref(), Some("a.img"));
        assert_eq!(top[0].children[0].get("x"), Some("1"));
        assert_eq!(top[0].all("partition").next().unwrap().get("size"), Some("4M"));
    }

    #[test]
    fn an_unclosed_section_is_an_error() {
        assert!(parse("image a {\n size = 1M\n").is_err());
        assert!(parse("image a { size }").is_err());
    }
}
