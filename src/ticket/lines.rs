//! Physical lines (CRLF, LF or CR) and the fields of one CSV line, with
//! quoting; a quoted field never spans lines.

use std::borrow::Cow;

/// Physical lines with their 1-based numbers; CRLF, LF and CR end a line.
pub(super) struct PhysicalLines<'a> {
    rest: &'a str,
    number: u32,
}

impl<'a> PhysicalLines<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        PhysicalLines { rest: text, number: 0 }
    }
}

impl<'a> Iterator for PhysicalLines<'a> {
    type Item = (u32, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        self.number = self.number.saturating_add(1);
        let end = self.rest.bytes().position(|b| b == b'\n' || b == b'\r');
        let (line, rest) = match end {
            None => (self.rest, ""),
            Some(end) => {
                let (line, ending) = self.rest.split_at_checked(end)?;
                let skip = if ending.starts_with("\r\n") { 2 } else { 1 };
                (line, ending.get(skip..).unwrap_or(""))
            }
        };
        self.rest = rest;
        Some((self.number, line))
    }
}

// ---------------------------------------------------------------------------
// CSV fields
// ---------------------------------------------------------------------------
//
// Index arithmetic below (`+ 1`, `+ 2`) is on byte positions inside one
// line, all at most `line.len()` ≤ `isize::MAX`: it cannot overflow. Every
// slice goes through `get`, so no index can panic.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QuoteError {
    /// `"Menu, midi,aZde,14.90`: no closing quote on the line.
    Unterminated,
    /// `"Menu" midi,aZde,14.90`: text between a closing quote and the delimiter.
    TextAfterQuote,
}

/// Splits one line into fields, calling `each(index, field)` for each, and
/// returns how many there were. Fields are borrowed unless a `""` escape
/// must be undone. Unquoted fields keep their surrounding whitespace (the
/// caller trims); whitespace before an opening quote is skipped.
pub(super) fn split_fields<'a>(
    line: &'a str,
    delimiter: u8,
    mut each: impl FnMut(usize, Cow<'a, str>),
) -> Result<usize, QuoteError> {
    let bytes = line.as_bytes();
    let is_blank = |b: u8| (b == b' ' || b == b'\t') && b != delimiter;
    let mut count = 0usize;
    let mut start = 0usize;
    loop {
        let mut quote = start;
        while bytes.get(quote).is_some_and(|&b| is_blank(b)) {
            quote += 1;
        }
        let (field, next) = if bytes.get(quote) == Some(&b'"') {
            let (field, mut after) = read_quoted(line, quote + 1)?;
            while bytes.get(after).is_some_and(|&b| is_blank(b)) {
                after += 1;
            }
            match bytes.get(after) {
                None => (field, None),
                Some(&b) if b == delimiter => (field, Some(after + 1)),
                Some(_) => return Err(QuoteError::TextAfterQuote),
            }
        } else {
            let tail = line.get(start..).unwrap_or("");
            match tail.bytes().position(|b| b == delimiter) {
                Some(end) => (Cow::Borrowed(tail.get(..end).unwrap_or("")), Some(start + end + 1)),
                None => (Cow::Borrowed(tail), None),
            }
        };
        each(count, field);
        count += 1;
        match next {
            Some(next) => start = next,
            None => return Ok(count),
        }
    }
}

/// Reads a quoted field whose content starts at `from`; returns it and the
/// index just after the closing quote.
fn read_quoted(line: &str, from: usize) -> Result<(Cow<'_, str>, usize), QuoteError> {
    let bytes = line.as_bytes();
    let mut unescaped: Option<String> = None;
    let (mut segment, mut search) = (from, from);
    loop {
        let offset = bytes.get(search..).and_then(|rest| rest.iter().position(|&b| b == b'"'));
        let quote = search + offset.ok_or(QuoteError::Unterminated)?;
        let piece = line.get(segment..quote).unwrap_or("");
        if bytes.get(quote + 1) == Some(&b'"') {
            // `""`: keep one quote, continue after the pair.
            let buffer = unescaped.get_or_insert_with(String::new);
            buffer.push_str(piece);
            buffer.push('"');
            segment = quote + 2;
            search = quote + 2;
        } else {
            let field = match unescaped {
                None => Cow::Borrowed(piece),
                Some(mut buffer) => {
                    buffer.push_str(piece);
                    Cow::Owned(buffer)
                }
            };
            return Ok((field, quote + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_lines_end_at_crlf_lf_and_cr() {
        let lines: Vec<_> = PhysicalLines::new("a\r\nb\nc\rd\r\n\r\ne").collect();
        assert_eq!(lines, [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, ""), (6, "e")]);
        assert_eq!(PhysicalLines::new("a\n").count(), 1);
        assert_eq!(PhysicalLines::new("").count(), 0);
        assert_eq!(PhysicalLines::new("\r").collect::<Vec<_>>(), [(1, "")]);
    }

    fn fields(line: &str, delimiter: u8) -> Result<Vec<String>, QuoteError> {
        let mut out = Vec::new();
        split_fields(line, delimiter, |_, f| out.push(f.into_owned()))?;
        Ok(out)
    }

    #[test]
    fn fields_understand_quotes_and_escapes() {
        assert_eq!(fields("a,b,c", b','), Ok(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(
            fields(r#" "Menu, midi" ,x,"14,90""#, b','),
            Ok(vec!["Menu, midi".into(), "x".into(), "14,90".into()])
        );
        assert_eq!(fields(r#""Le ""grand"" café",x"#, b','), Ok(vec![r#"Le "grand" café"#.into(), "x".into()]));
        assert_eq!(fields(r#"Pizza 12",x"#, b','), Ok(vec![r#"Pizza 12""#.into(), "x".into()]));
        assert_eq!(fields("a,,", b','), Ok(vec!["a".into(), "".into(), "".into()]));
        assert_eq!(fields("\ta\t\tb", b'\t'), Ok(vec!["".into(), "a".into(), "".into(), "b".into()]));
        assert_eq!(fields(r#""Menu, midi,x"#, b','), Err(QuoteError::Unterminated));
        assert_eq!(fields(r#""Menu" midi,x"#, b','), Err(QuoteError::TextAfterQuote));
    }
}
