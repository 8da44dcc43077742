//! The product table: finding the header row, its columns by name, and
//! reading each record into a `Line` or a problem.

use std::borrow::Cow;

use super::lines::{split_fields, QuoteError};
use super::money::{money_message, parse_money, MoneyError};
use super::{counted, line_no, Excerpt, Line, Problems, MAX_ID_BYTES};

/// Delimiters a header row may use, in order of preference.
const DELIMITERS: [u8; 3] = [b',', b';', b'\t'];

/// Where the columns are, from the header row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Table {
    /// Physical line of the header row.
    pub(super) line: u32,
    pub(super) delimiter: u8,
    /// Number of fields of the header row, hence of every record.
    pub(super) width: usize,
    product_id: usize,
    price: usize,
    pub(super) name: Option<usize>,
}

/// Where one named column was seen, and how often.
#[derive(Default, Clone, Copy)]
struct Seen {
    first: Option<usize>,
    count: usize,
}

impl Seen {
    fn see(&mut self, index: usize) {
        self.first.get_or_insert(index);
        self.count += 1;
    }
}

/// Whether `line` is a header row: `Some(Ok)` it is, `Some(Err(name))` it is
/// but names the column `name` twice, `None` it is not.
pub(super) fn header_row(number: u32, line: &str) -> Option<Result<Table, &'static str>> {
    DELIMITERS.iter().find_map(|&delimiter| {
        if !line.as_bytes().contains(&delimiter) {
            return None;
        }
        let (mut product_id, mut price, mut name) = (Seen::default(), Seen::default(), Seen::default());
        let width = split_fields(line, delimiter, |index, field| {
            let field = field.trim();
            if field.eq_ignore_ascii_case("product_id") {
                product_id.see(index);
            } else if field.eq_ignore_ascii_case("price") {
                price.see(index);
            } else if field.eq_ignore_ascii_case("product") {
                name.see(index);
            }
        })
        .ok()?;
        let duplicate = [(product_id, "product_id"), (price, "price"), (name, "product")]
            .into_iter()
            .find(|(seen, _)| seen.count > 1);
        Some(match (product_id.first, price.first, duplicate) {
            (Some(_), Some(_), Some((_, column))) => Err(column),
            (Some(product_id), Some(price), None) => {
                Ok(Table { line: number, delimiter, width, product_id, price, name: name.first })
            }
            _ => return None,
        })
    })
}

/// The `no_product_table` message: what the body looked like instead.
pub(super) fn no_table_message(text: &str, first_stray: Option<(u32, &str)>) -> String {
    const MISSING: &str = "no CSV header row with product_id and price columns";
    let start = text.trim_start();
    if start.starts_with('<') {
        format!("{MISSING}: the body looks like HTML or XML, starting {}", Excerpt(start))
    } else if start.starts_with('{') || start.starts_with('[') {
        format!("{MISSING}: the body looks like JSON, starting {}", Excerpt(start))
    } else if let Some((line, stray)) = first_stray {
        format!("{MISSING}; the first line that is not `Key: value` is line {line}: {}", Excerpt(stray))
    } else {
        format!("{MISSING}: the body has only `Key: value` lines")
    }
}

/// Reads one record; `Some` when it gives a line. Problems are recorded.
pub(super) fn read_record<'t>(
    number: u32,
    record: &'t str,
    table: &Table,
    fields: &mut Vec<Cow<'t, str>>,
    problems: &mut Problems,
) -> Option<Line> {
    fields.clear();
    let split = split_fields(record, table.delimiter, |index, field| {
        // Fields past the header row's width only count: the record is refused.
        if index < table.width {
            fields.push(field);
        }
    });
    let count = match split {
        Ok(count) => count,
        Err(QuoteError::Unterminated) => {
            problems.at_line(number, "unterminated_quote", || {
                format!("a quoted field is not closed on its line: {}", Excerpt(record))
            });
            return None;
        }
        Err(QuoteError::TextAfterQuote) => {
            problems.at_line(number, "bad_quote", || {
                format!("text follows a closing quote before the delimiter: {}", Excerpt(record))
            });
            return None;
        }
    };
    if count != table.width {
        problems.at_line(number, "field_count", || {
            format!(
                "{} where the header row (line {}) has {}: {}",
                counted(count, "field"),
                table.line,
                table.width,
                Excerpt(record)
            )
        });
        return None;
    }
    let field = |index: usize| fields.get(index).map_or("", |f| f.trim());
    let product_id = field(table.product_id);
    let name = table.name.map_or("", field);
    let raw_price = field(table.price);

    let refused: Option<(&'static str, String)> = if product_id.is_empty() {
        Some(("missing_product_id", format!("product_id is empty: {}", Excerpt(record))))
    } else if product_id.contains('\0') {
        Some(("nul_byte", format!("product_id {} contains a NUL byte", Excerpt(product_id))))
    } else if product_id.len() > MAX_ID_BYTES {
        Some(("product_id_too_long", format!("product_id {} is longer than {MAX_ID_BYTES} bytes", Excerpt(product_id))))
    } else if name.contains('\0') {
        Some(("nul_byte", format!("name {} contains a NUL byte", Excerpt(name))))
    } else {
        None
    };
    if let Some((code, message)) = refused {
        problems.at_line(number, code, || message);
        return None;
    }
    let price = match parse_money(raw_price) {
        Ok(price) => price,
        Err(error) => {
            let code = match error {
                MoneyError::Precision(_) => "price_precision",
                MoneyError::OutOfRange => "price_out_of_range",
                MoneyError::Empty | MoneyError::Malformed | MoneyError::Grouping => "bad_price",
            };
            problems.at_line(number, code, || money_message("price", raw_price, error));
            return None;
        }
    };
    if name.is_empty() && table.name.is_some() {
        problems.at_line(number, "empty_name", || format!("product {} has an empty name", Excerpt(product_id)));
    }
    Some(Line { line_no: line_no(number), product_id: product_id.to_owned(), name: name.to_owned(), price })
}

/// A record with no data at all: only delimiters, quotes-free, and spaces.
pub(super) fn is_empty_record(record: &str, delimiter: u8) -> bool {
    record.bytes().all(|b| b == delimiter || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rows_are_found_by_name_in_any_order_and_delimiter() {
        let table = header_row(5, " PRICE ,\"Product\",product_id,qty").unwrap().unwrap();
        assert_eq!((table.delimiter, table.width, table.product_id, table.price, table.name), (b',', 4, 2, 0, Some(1)));
        assert_eq!(header_row(1, "product;product_id;price").unwrap().unwrap().delimiter, b';');
        assert_eq!(header_row(1, "product,product_id,price,price"), Some(Err("price")));
        assert_eq!(header_row(1, "item,id,amount"), None);
        assert_eq!(header_row(1, "Order: 1"), None);
    }
}
