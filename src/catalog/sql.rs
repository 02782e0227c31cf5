//! Reading an endpoint's `query.sql` the way ClickHouse's lexer would, as far as the catalog
//! needs: where the `{name:Type}` placeholders are, how many statements there are, and what
//! kind of statement it is. Quotes and comments are skipped so that text inside them is
//! never taken for syntax.

/// A `{name:Type}` placeholder and where it stands (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    pub type_text: String,
    pub line: usize,
    pub column: usize,
}

/// What the catalog learns from one query.sql.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlScan {
    pub placeholders: Vec<Placeholder>,
    /// 1-based line of every statement after the first (a query endpoint has exactly one).
    pub extra_statements: Vec<usize>,
    /// The first keyword, upper-cased (`SELECT`, `WITH`, ... or `(`).
    pub first_keyword: String,
    /// 1-based line of a top-level `FORMAT` or `INTO OUTFILE` clause, which would override the
    /// output format the caller asked for.
    pub output_clause: Option<(usize, String)>,
    /// Every bare word and quoted identifier (`x`, `` `x` ``, `"x"`): a superset of the tables
    /// the query reads.
    pub identifiers: std::collections::BTreeSet<String>,
    /// How often each identifier occurs.
    pub identifier_counts: std::collections::BTreeMap<String, usize>,
    /// Words called as functions (`name(`), lower-cased: table functions and dictionaries.
    pub calls: std::collections::BTreeSet<String>,
    /// 1-based lines of quoted identifiers with backslash escapes, whose real name only the
    /// server's lexer knows.
    pub escaped_identifiers: Vec<usize>,
    /// The SQL with string literals and comments blanked out: only what the server parses as
    /// code.
    pub code: String,
}

/// Scans `sql`. Unterminated quotes or comments end the scan at the end of the text (the
/// server reports those as syntax errors with better positions than we could).
pub fn scan(sql: &str) -> SqlScan {
    let bytes = sql.as_bytes();
    let mut scan = SqlScan {
        placeholders: Vec::new(),
        extra_statements: Vec::new(),
        first_keyword: String::new(),
        output_clause: None,
        identifiers: std::collections::BTreeSet::new(),
        identifier_counts: std::collections::BTreeMap::new(),
        calls: std::collections::BTreeSet::new(),
        escaped_identifiers: Vec::new(),
        code: String::new(),
    };
    let mut code = bytes.to_vec();
    let mut blank = |from: usize, to: usize| {
        for byte in &mut code[from..to.min(bytes.len())] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    };
    let mut i = 0;
    let mut after_semicolon = false;
    let mut previous_word = String::new();
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'\'' => {
                let end = skip_quoted(bytes, i);
                blank(i, end);
                i = end;
            }
            // A heredoc string: $$…$$.
            b'$' if bytes.get(i + 1) == Some(&b'$') => {
                let end = sql[i + 2..].find("$$").map_or(bytes.len(), |end| i + 2 + end + 2);
                blank(i, end);
                i = end;
            }
            b'"' | b'`' => {
                let end = skip_quoted(bytes, i);
                let inner = &sql[i + 1..end.saturating_sub(1).max(i + 1)];
                if inner.contains('\\') {
                    scan.escaped_identifiers.push(position(sql, i).0);
                }
                scan.identifiers.insert(inner.to_owned());
                *scan.identifier_counts.entry(inner.to_owned()).or_default() += 1;
                i = end;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                let end = skip_line(bytes, i);
                blank(i, end);
                i = end;
            }
            b'#' if matches!(bytes.get(i + 1), Some(b' ' | b'!')) => {
                let end = skip_line(bytes, i);
                blank(i, end);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = skip_block_comment(sql, i);
                blank(i, end);
                i = end;
            }
            b';' => {
                after_semicolon = true;
                i += 1;
            }
            b'{' => match placeholder_at(sql, i) {
                Some((name, type_text, end)) => {
                    let (line, column) = position(sql, i);
                    scan.placeholders.push(Placeholder {
                        name,
                        type_text,
                        line,
                        column,
                    });
                    i = end;
                }
                None => i += 1,
            },
            _ if byte.is_ascii_whitespace() => i += 1,
            _ => {
                if after_semicolon {
                    scan.extra_statements.push(position(sql, i).0);
                    after_semicolon = false;
                }
                if byte.is_ascii_alphabetic() || byte == b'_' {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                        i += 1;
                    }
                    scan.identifiers.insert(sql[start..i].to_owned());
                    *scan.identifier_counts.entry(sql[start..i].to_owned()).or_default() += 1;
                    if sql[i..].trim_start().starts_with('(') {
                        scan.calls.insert(sql[start..i].to_ascii_lowercase());
                    }
                    let word = sql[start..i].to_ascii_uppercase();
                    if scan.first_keyword.is_empty() {
                        scan.first_keyword.clone_from(&word);
                    }
                    let clause = match (previous_word.as_str(), word.as_str()) {
                        (_, "FORMAT") => Some("FORMAT".to_owned()),
                        ("INTO", "OUTFILE") => Some("INTO OUTFILE".to_owned()),
                        _ => None,
                    };
                    if let Some(clause) = clause
                        && scan.output_clause.is_none()
                    {
                        scan.output_clause = Some((position(sql, start).0, clause));
                    }
                    previous_word = word;
                } else {
                    if scan.first_keyword.is_empty() && byte == b'(' {
                        scan.first_keyword = "(".to_owned();
                    }
                    i += 1;
                }
            }
        }
    }
    scan.code = String::from_utf8_lossy(&code).into_owned();
    scan
}

/// The index just past a block comment starting at `start`: ClickHouse's comments nest.
fn skip_block_comment(sql: &str, start: usize) -> usize {
    let bytes = sql.as_bytes();
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < bytes.len() {
        if bytes[i] == b'/' && bytes[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if bytes[i] == b'*' && bytes[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// The index just past a quoted literal or identifier starting at `start` (backslash escapes
/// and doubled quotes both stay inside it).
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn skip_line(bytes: &[u8], start: usize) -> usize {
    bytes[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |end| start + end + 1)
}

/// Parses `{name:Type}` at `start`: an identifier, a colon, then a type running to the
/// matching `}` (types may hold parentheses and quoted time zones).
fn placeholder_at(sql: &str, start: usize) -> Option<(String, String, usize)> {
    let rest = &sql[start + 1..];
    let name_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let name = &rest[..name_len];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let after_name = rest[name_len..].trim_start();
    let type_part = after_name.strip_prefix(':')?;
    let mut depth = 0usize;
    let mut in_quote = false;
    for (offset, c) in type_part.char_indices() {
        match c {
            '\'' => in_quote = !in_quote,
            '(' if !in_quote => depth += 1,
            ')' if !in_quote => depth = depth.checked_sub(1)?,
            '}' if !in_quote && depth == 0 => {
                let type_text = type_part[..offset].trim().to_owned();
                let consumed = sql.len() - type_part.len() + offset + 1;
                return (!type_text.is_empty()).then(|| (name.to_owned(), type_text, consumed));
            }
            '\n' | '{' if !in_quote => return None,
            _ => {}
        }
    }
    None
}

/// 1-based line and column (in characters) of a byte offset.
fn position(sql: &str, offset: usize) -> (usize, usize) {
    let before = &sql[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<(String, String)> {
        scan(sql)
            .placeholders
            .into_iter()
            .map(|p| (p.name, p.type_text))
            .collect()
    }

    #[test]
    fn placeholders_are_found_with_their_types_and_positions() {
        let sql =
            "SELECT *\nFROM events\nWHERE ts >= {from:DateTime64(3, 'UTC')} AND tenant_id = {caller_tenant:String}";
        let scan = scan(sql);
        assert_eq!(scan.placeholders.len(), 2);
        assert_eq!(scan.placeholders[0].name, "from");
        assert_eq!(scan.placeholders[0].type_text, "DateTime64(3, 'UTC')");
        assert_eq!((scan.placeholders[0].line, scan.placeholders[0].column), (3, 13));
        assert_eq!(scan.placeholders[1].type_text, "String");
        assert_eq!(scan.first_keyword, "SELECT");
        assert!(scan.extra_statements.is_empty());
    }

    #[test]
    fn text_inside_quotes_and_comments_is_not_syntax() {
        let sql =
            "SELECT '{a:String}', \"{b:UInt8}\" -- {c:Int8}; SELECT 2\n/* {d:Date}; */ # {e:UUID}\n#! {f:UUID}\nFROM t";
        let scan = scan(sql);
        assert!(scan.placeholders.is_empty(), "{:?}", scan.placeholders);
        assert!(scan.extra_statements.is_empty());
        assert!(scan.output_clause.is_none());
    }

    #[test]
    fn a_second_statement_is_reported_with_its_line() {
        let scan = scan("SELECT 1;\nDROP TABLE events");
        assert_eq!(scan.extra_statements, vec![2]);
        assert!(super::scan("SELECT 1;\n  -- trailing\n").extra_statements.is_empty());
    }

    #[test]
    fn nested_types_and_map_literals_are_told_apart() {
        assert_eq!(
            names("SELECT {ids:Array(Nullable(UInt64))}, {'k':1}, map('a', {v:Float64})"),
            vec![
                ("ids".to_owned(), "Array(Nullable(UInt64))".to_owned()),
                ("v".to_owned(), "Float64".to_owned())
            ]
        );
    }

    #[test]
    fn format_and_outfile_clauses_are_noticed() {
        assert_eq!(
            scan("SELECT 1\nFORMAT JSON").output_clause,
            Some((2, "FORMAT".to_owned()))
        );
        assert_eq!(
            scan("SELECT 1 INTO OUTFILE 'x'").output_clause,
            Some((1, "INTO OUTFILE".to_owned()))
        );
        assert_eq!(scan("SELECT formatDateTime(now(), '%F')").output_clause, None);
    }

    #[test]
    fn identifiers_include_quoted_and_qualified_names() {
        let scan = scan("SELECT count() FROM default.`events` AS e JOIN \"users\" USING (id) WHERE x = 'logs'");
        for name in ["default", "events", "users", "e", "id"] {
            assert!(scan.identifiers.contains(name), "{name}: {:?}", scan.identifiers);
        }
        assert!(
            !scan.identifiers.contains("logs"),
            "string literals are not identifiers"
        );
    }

    #[test]
    fn nested_comments_and_heredocs_hide_what_they_contain() {
        let scan = scan("SELECT 1 /* a /* b */ WHERE x = {p:String} */ FROM t WHERE $$ {q:String} $$ = ''");
        assert!(scan.placeholders.is_empty(), "{:?}", scan.placeholders);
        assert!(!scan.code.contains("{p:String}") && !scan.code.contains("{q:String}"));
        assert!(scan.code.contains("FROM t"));
    }

    #[test]
    fn calls_counts_and_escaped_identifiers_are_recorded() {
        let scan =
            scan("SELECT count() FROM merge(currentDatabase(), '^ev') JOIN `ev\\x65nts` USING id JOIN events USING id");
        assert!(scan.calls.contains("merge") && scan.calls.contains("count"));
        assert_eq!(scan.escaped_identifiers, vec![1]);
        assert_eq!(scan.identifier_counts.get("events"), Some(&1));
    }

    #[test]
    fn the_first_keyword_is_upper_cased() {
        assert_eq!(scan("  with x AS (SELECT 1) SELECT * FROM x").first_keyword, "WITH");
        assert_eq!(scan("(SELECT 1)").first_keyword, "(");
        assert_eq!(scan("insert into t values (1)").first_keyword, "INSERT");
    }
}
