//! Exact decimal arithmetic for metric sums.
//!
//! Producers send money and durations as decimal text (`49.99`), and users
//! expect `0.1 + 0.2` to be `0.3`. Binary floats cannot promise that, so a
//! value is kept as an integer mantissa with a power-of-ten scale. Only when
//! a number has more digits than an `i128` can carry does a sum fall back to
//! `f64`, which keeps it finite and approximately right.

use std::fmt;

/// Largest number of fractional digits kept exactly. Values finer than this
/// (`1e-40`) are summed as floats instead.
const MAX_SCALE: u32 = 30;

/// A decimal number `mantissa / 10^scale`, with no trailing fractional zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

/// A number as recorded: exact when its digits fit, binary otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// Held exactly.
    Exact(Decimal),
    /// Too many digits for [`Decimal`]; kept as the nearest `f64`.
    Float(f64),
}

/// Why a number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// The text is not a JSON number.
    Syntax,
    /// The number is too large to be represented as a finite `f64`.
    NotFinite,
}

impl Decimal {
    /// Zero, the sum of nothing.
    pub const ZERO: Decimal = Decimal { mantissa: 0, scale: 0 };

    fn normalized(mut mantissa: i128, mut scale: u32) -> Decimal {
        while scale > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            scale -= 1;
        }
        Decimal { mantissa, scale }
    }

    /// Adds two decimals, or `None` when the result would not fit.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let a = self.mantissa.checked_mul(pow10(scale - self.scale)?)?;
        let b = other.mantissa.checked_mul(pow10(scale - other.scale)?)?;
        Some(Decimal::normalized(a.checked_add(b)?, scale))
    }

    /// The nearest `f64`, rounded correctly.
    pub fn to_f64(self) -> f64 {
        self.to_string().parse().unwrap_or(f64::NAN)
    }
}

fn pow10(exp: u32) -> Option<i128> {
    10i128.checked_pow(exp)
}

impl fmt::Display for Decimal {
    /// Writes the shortest plain form, keeping `.0` on whole numbers so that
    /// JSON readers see a float, as the wire format promises.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.mantissa < 0 { "-" } else { "" };
        // Digits are laid out on the stack: this runs for every update and
        // every metric of a snapshot, where an allocation would dominate.
        let mut buf = [0u8; 40];
        let mut at = buf.len();
        let magnitude = self.mantissa.unsigned_abs();
        // 128-bit division is slow; nearly every value fits in 64 bits.
        if let Ok(mut rest) = u64::try_from(magnitude) {
            loop {
                at -= 1;
                buf[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
                if rest == 0 {
                    break;
                }
            }
        } else {
            let mut rest = magnitude;
            while rest > 0 {
                at -= 1;
                buf[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
        }
        let digits = std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?;
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}.0");
        }
        if digits.len() > scale {
            let (int, frac) = digits.split_at(digits.len() - scale);
            write!(f, "{sign}{int}.{frac}")
        } else {
            let zeros = scale - digits.len();
            write!(f, "{sign}0.{:0>zeros$}{digits}", "")
        }
    }
}

impl Number {
    /// Parses JSON number text such as `-12.5e3`.
    pub fn parse(text: &str) -> Result<Number, NumberError> {
        let parsed = parse_parts(text.as_bytes()).ok_or(NumberError::Syntax)?;
        if let Some(exact) = parsed {
            return Ok(Number::Exact(exact));
        }
        let float: f64 = text.parse().map_err(|_| NumberError::Syntax)?;
        if float.is_finite() {
            Ok(Number::Float(float))
        } else {
            Err(NumberError::NotFinite)
        }
    }

    /// The value as an `f64`.
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Exact(d) => d.to_f64(),
            Number::Float(x) => x,
        }
    }

    /// Adds two numbers, staying exact while both are exact and the result
    /// fits. Returns `None` when the sum is not a finite number.
    pub fn checked_add(self, other: Number) -> Option<Number> {
        if let (Number::Exact(a), Number::Exact(b)) = (self, other) {
            if let Some(sum) = a.checked_add(b) {
                return Some(Number::Exact(sum));
            }
        }
        let sum = self.to_f64() + other.to_f64();
        sum.is_finite().then_some(Number::Float(sum))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Exact(d) => d.fmt(f),
            Number::Float(x) if x.fract() == 0.0 && x.abs() < 1e16 => {
                write!(f, "{x:.1}")
            }
            // `{:?}` prints the shortest text that reads back as the same
            // f64, with an exponent for very large or small magnitudes.
            Number::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// Splits JSON number text into an exact decimal. The outer `Option` is
/// `None` for text that is not a JSON number; the inner one is `None` when
/// the number is valid but has too many digits to hold exactly.
fn parse_parts(text: &[u8]) -> Option<Option<Decimal>> {
    let (negative, rest) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if int_len == 0 || (int_len > 1 && rest[0] == b'0') {
        return None;
    }
    let (int, mut rest) = rest.split_at(int_len);
    let mut frac: &[u8] = &[];
    if let Some((b'.', after)) = rest.split_first() {
        let len = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        (frac, rest) = after.split_at(len);
    }
    let mut exp: i64 = 0;
    if let Some((b'e' | b'E', after)) = rest.split_first() {
        let (exp_negative, digits) = match after.split_first()? {
            (b'-', d) => (true, d),
            (b'+', d) => (false, d),
            _ => (false, after),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Exponents this long are far outside what either form can hold;
        // saturating keeps the arithmetic below from overflowing.
        let magnitude =
            std::str::from_utf8(digits).ok()?.parse().unwrap_or(9999);
        exp = if exp_negative { -magnitude } else { magnitude };
        rest = &[];
    }
    if !rest.is_empty() {
        return None;
    }
    Some(exact_from_digits(negative, int, frac, exp))
}

fn exact_from_digits(
    negative: bool,
    int: &[u8],
    frac: &[u8],
    exp: i64,
) -> Option<Decimal> {
    // Zeros carry no digits: `0e5000` is zero and `0.10000…0` is 0.1, both
    // exact, however long the text.
    let frac_len = frac.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    let frac = &frac[..frac_len];
    if int.iter().chain(frac).all(|&d| d == b'0') {
        return Some(Decimal::ZERO);
    }
    let mut mantissa: i128 = 0;
    for &digit in int.iter().chain(frac) {
        mantissa =
            mantissa.checked_mul(10)?.checked_add(i128::from(digit - b'0'))?;
    }
    let mut scale = frac.len() as i64 - exp;
    if scale < 0 {
        mantissa = mantissa.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?;
        scale = 0;
    }
    let mut decimal = Decimal::normalized(mantissa, u32::try_from(scale).ok()?);
    if decimal.scale > MAX_SCALE {
        return None;
    }
    if negative {
        decimal.mantissa = -decimal.mantissa;
    }
    Some(decimal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Number {
        Number::parse(text).unwrap()
    }

    fn sum(values: &[&str]) -> String {
        let mut total = Number::Exact(Decimal::ZERO);
        for v in values {
            total = total.checked_add(num(v)).unwrap();
        }
        total.to_string()
    }

    #[test]
    fn decimal_sums_are_exact() {
        assert_eq!(sum(&["0.1", "0.2"]), "0.3");
        assert_eq!(sum(&["16.99", "10.34", "-0.33"]), "27.0");
        assert_eq!(sum(&["1", "2"]), "3.0");
        assert_eq!(sum(&["1.5e2", "2.5E-1"]), "150.25");
        assert_eq!(sum(&["-0.001"]), "-0.001");
    }

    #[test]
    fn a_million_cents_make_ten_thousand() {
        let cent = num("0.01");
        let mut total = Number::Exact(Decimal::ZERO);
        for _ in 0..1_000_000 {
            total = total.checked_add(cent).unwrap();
        }
        assert_eq!(total.to_string(), "10000.0");
    }

    #[test]
    fn whole_numbers_keep_one_decimal_place() {
        assert_eq!(num("1").to_string(), "1.0");
        assert_eq!(num("-0").to_string(), "0.0");
        assert_eq!(num("1.000").to_string(), "1.0");
        assert_eq!(num("1e3").to_string(), "1000.0");
    }

    #[test]
    fn zeros_never_force_a_float() {
        assert_eq!(num("0e5000"), Number::Exact(Decimal::ZERO));
        assert_eq!(num("-0.000e-9999"), Number::Exact(Decimal::ZERO));
        let long = format!("0.1{}", "0".repeat(60));
        assert_eq!(sum(&[&long, "0.2"]), "0.3");
    }

    #[test]
    fn too_many_digits_fall_back_to_float() {
        assert!(matches!(num("1e300"), Number::Float(_)));
        assert!(matches!(num("1e-40"), Number::Float(_)));
        assert!(matches!(
            num("123456789012345678901234567890123456789012"),
            Number::Float(_)
        ));
        assert_eq!(num("1e300").to_string(), "1e300");
        let total = num("1e300").checked_add(num("0.5")).unwrap();
        assert_eq!(total.to_string(), "1e300");
    }

    #[test]
    fn overflowing_sums_are_refused() {
        assert_eq!(Number::parse("1e400"), Err(NumberError::NotFinite));
        let big = num("1.7e308");
        assert_eq!(big.checked_add(big), None);
    }

    #[test]
    fn an_exact_sum_that_outgrows_i128_degrades_to_float() {
        let big = num("99999999999999999999999999999999999999");
        let total = big.checked_add(big).unwrap();
        assert!(matches!(total, Number::Float(x) if (x - 2e38).abs() < 1e24));
    }

    #[test]
    fn malformed_numbers_are_syntax_errors() {
        for bad in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "NaN"] {
            assert_eq!(Number::parse(bad), Err(NumberError::Syntax), "{bad}");
        }
    }
}
