//! Exact money: what a price, VAT or total may look like, and what is
//! refused rather than guessed.

use rust_decimal::Decimal;

use super::Excerpt;

/// Why a money value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MoneyError {
    Empty,
    /// Not digits with an optional sign, separator and `€`.
    Malformed,
    /// More than one `.`/`,`: grouping separators, or junk.
    Grouping,
    /// More than 2 decimals (the count).
    Precision(usize),
    /// Absolute value ≥ 10^10: does not fit `NUMERIC(12,2)`.
    OutOfRange,
}

/// Largest number of integer digits (after leading zeros) that fits
/// `NUMERIC(12,2)`.
const MAX_INTEGER_DIGITS: usize = 10;

/// Parses money exactly; the result always has scale 2. See the module
/// documentation for what is accepted.
pub(super) fn parse_money(input: &str) -> Result<Decimal, MoneyError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(MoneyError::Empty);
    }
    let (s, euro) = strip_euro(s);
    let (negative, s) = match (s.strip_prefix('-'), s.strip_prefix('+')) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => (false, s),
    };
    // `-€2.00`: the sign may come before the euro sign (only one `€`).
    let s = if euro { s } else { s.strip_prefix('€').map_or(s, str::trim_start) };
    let (integer, fraction) = split_decimal(s)?;
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || !all_digits(fraction.unwrap_or("")) {
        return Err(MoneyError::Malformed);
    }
    // `.50` is fine, `5.` is not (a body cut in the middle of `5.00`).
    match fraction {
        None if integer.is_empty() => return Err(MoneyError::Malformed),
        Some("") => return Err(MoneyError::Malformed),
        Some(fraction) if fraction.len() > 2 => return Err(MoneyError::Precision(fraction.len())),
        _ => {}
    }
    if integer.trim_start_matches('0').len() > MAX_INTEGER_DIGITS {
        return Err(MoneyError::OutOfRange);
    }
    let fraction = fraction.unwrap_or("");
    let padding = std::iter::repeat(b'0').take(2usize.saturating_sub(fraction.len()));
    let mut cents: i64 = 0;
    for digit in integer.bytes().chain(fraction.bytes()).chain(padding) {
        cents = cents
            .checked_mul(10)
            .and_then(|c| c.checked_add(i64::from(digit.wrapping_sub(b'0'))))
            .ok_or(MoneyError::OutOfRange)?;
    }
    let cents = if negative { -cents } else { cents };
    Decimal::try_new(cents, 2).map_err(|_| MoneyError::OutOfRange)
}

/// Removes one `€` at either end, with the spaces next to it.
fn strip_euro(s: &str) -> (&str, bool) {
    if let Some(rest) = s.strip_prefix('€') {
        (rest.trim_start(), true)
    } else if let Some(rest) = s.strip_suffix('€') {
        (rest.trim_end(), true)
    } else {
        (s, false)
    }
}

/// Splits at the one decimal separator, if any.
fn split_decimal(s: &str) -> Result<(&str, Option<&str>), MoneyError> {
    let mut separators = s.match_indices(['.', ',']);
    match (separators.next(), separators.next()) {
        (None, _) => Ok((s, None)),
        (Some((at, _)), None) => Ok((s.get(..at).unwrap_or(""), Some(s.get(at + 1..).unwrap_or("")))),
        (Some(_), Some(_)) => Err(MoneyError::Grouping),
    }
}

/// A message for a refused money value; `what` names it (`price`, `Total`).
pub(super) fn money_message(what: &str, raw: &str, error: MoneyError) -> String {
    let raw = Excerpt(raw);
    match error {
        MoneyError::Empty => format!("{what} is empty"),
        MoneyError::Malformed => format!("{what} {raw} is not a decimal number"),
        MoneyError::Grouping => {
            format!("{what} {raw} has more than one '.' or ','; thousands separators are not accepted")
        }
        MoneyError::Precision(decimals) => {
            format!("{what} {raw} has {decimals} decimal places; at most 2 are allowed, and it is not rounded")
        }
        MoneyError::OutOfRange => {
            format!("{what} {raw} is too large: the absolute value must be below 10^10 (NUMERIC(12,2))")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn money_accepts_plain_signed_comma_and_euro_forms() {
        for (input, expected) in [
            ("2", "2.00"),
            ("2.5", "2.50"),
            ("14.90", "14.90"),
            ("14,90", "14.90"),
            (" 2.00 ", "2.00"),
            ("\u{a0}2,00\u{202f}€", "2.00"),
            ("-2.00", "-2.00"),
            ("+2.00", "2.00"),
            ("-0.00", "0.00"),
            (".50", "0.50"),
            ("€2", "2.00"),
            ("2 €", "2.00"),
            ("€ -2", "-2.00"),
            ("-€2.00", "-2.00"),
            ("-2.00 €", "-2.00"),
            ("0009999999999.99", "9999999999.99"),
            ("-9999999999.99", "-9999999999.99"),
        ] {
            assert_eq!(parse_money(input), Ok(dec(expected)), "input {input:?}");
            assert_eq!(parse_money(input).map(|d| d.scale()), Ok(2), "input {input:?}");
        }
    }

    #[test]
    fn money_refuses_what_it_would_have_to_guess() {
        use MoneyError::*;
        for (input, expected) in [
            ("", Empty),
            ("   ", Empty),
            ("abc", Malformed),
            ("5.", Malformed),
            (".", Malformed),
            ("-", Malformed),
            ("€", Malformed),
            ("1e5", Malformed),
            ("- 2", Malformed),
            ("--2", Malformed),
            ("(2.00)", Malformed),
            ("$2.00", Malformed),
            ("2.00 EUR", Malformed),
            ("€2€", Malformed),
            ("1 234,50", Malformed),
            ("١٢", Malformed),
            ("1,234.50", Grouping),
            ("1.234,50", Grouping),
            ("1.2.3", Grouping),
            ("1.234", Precision(3)),
            ("1,234", Precision(3)),
            ("14.900", Precision(3)),
            ("10000000000", OutOfRange),
            ("-10000000000.00", OutOfRange),
            ("99999999999999999999999999999999", OutOfRange),
        ] {
            assert_eq!(parse_money(input), Err(expected), "input {input:?}");
        }
    }
}
