//! The ClickHouse types a parameter may have: parsed from ClickHouse type syntax in
//! `endpoint.toml` and displayed in canonical ClickHouse spelling.

use std::fmt;
use std::str::FromStr;

/// A ClickHouse type that a parameter may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamType {
    /// `String`.
    String,
    /// `Int8`..`Int64` (`signed`) and `UInt8`..`UInt64`; `bits` is 8, 16, 32 or 64.
    Int {
        /// Width in bits: 8, 16, 32 or 64.
        bits: u8,
        /// `Int*` when true, `UInt*` when false.
        signed: bool,
    },
    /// `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `Decimal(P, S)`, with `1 <= P <= 38` and `S <= P`.
    Decimal {
        /// Total number of digits.
        precision: u8,
        /// Digits after the decimal point.
        scale: u8,
    },
    /// `Bool` (also spelled `Boolean`).
    Bool,
    /// `Date`.
    Date,
    /// `DateTime` or `DateTime('zone')`.
    DateTime {
        /// The time zone name, verbatim, if the type names one.
        timezone: Option<String>,
    },
    /// `DateTime64(P)` or `DateTime64(P, 'zone')`, with `P <= 9`.
    DateTime64 {
        /// Digits of sub-second precision.
        precision: u8,
        /// The time zone name, verbatim, if the type names one.
        timezone: Option<String>,
    },
    /// `UUID`.
    Uuid,
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
    /// `Array(T)`.
    Array(Box<ParamType>),
    /// `Nullable(T)`; `T` is never `Array` or `Nullable`.
    Nullable(Box<ParamType>),
}

impl ParamType {
    /// Whether the scalar (inside `Array` and `Nullable`) is a number in JSON: integers, floats.
    pub fn scalar_is_numeric(&self) -> bool {
        matches!(
            self.scalar(),
            ParamType::Int { .. } | ParamType::Float32 | ParamType::Float64
        )
    }

    /// Whether the type is `Nullable(..)`.
    pub fn is_nullable(&self) -> bool {
        matches!(self, ParamType::Nullable(_))
    }

    /// The type inside `Nullable(..)`, or the type itself.
    pub fn inner(&self) -> &ParamType {
        match self {
            ParamType::Nullable(inner) => inner,
            other => other,
        }
    }

    /// The element type of an `Array(..)`.
    pub fn element(&self) -> Option<&ParamType> {
        match self {
            ParamType::Array(element) => Some(element),
            _ => None,
        }
    }

    /// The scalar type under any `Array(..)` and `Nullable(..)` wrappers.
    pub fn scalar(&self) -> &ParamType {
        match self {
            ParamType::Array(inner) | ParamType::Nullable(inner) => inner.scalar(),
            other => other,
        }
    }
}

/// The bare type names, for the letter-case hint in [`TypeError`]s.
const NAMES: &[&str] = &[
    "String",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "Float32",
    "Float64",
    "Decimal",
    "Decimal32",
    "Decimal64",
    "Decimal128",
    "Bool",
    "Boolean",
    "Date",
    "DateTime",
    "DateTime64",
    "UUID",
    "IPv4",
    "IPv6",
    "Array",
    "Nullable",
];

/// The type names accepted, listed in every [`TypeError`].
const SUPPORTED: &str = "String, Int8, Int16, Int32, Int64, UInt8, UInt16, UInt32, UInt64, \
    Float32, Float64, Decimal(P, S), Decimal32(S), Decimal64(S), Decimal128(S), Bool, Date, \
    DateTime, DateTime('zone'), DateTime64(P), DateTime64(P, 'zone'), UUID, IPv4, IPv6, \
    Array(T), Nullable(T)";

/// Deeper nesting than this is refused, so that a hostile type string cannot exhaust the stack.
const MAX_DEPTH: usize = 16;

/// Why a type string is not a supported ClickHouse type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid type `{input}`: {problem}; supported types are {}", SUPPORTED)]
pub struct TypeError {
    input: String,
    problem: String,
}

impl FromStr for ParamType {
    type Err = TypeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| TypeError {
            input: input.to_owned(),
            problem,
        };
        let mut parser = Parser { rest: input };
        let ty = parser.ty(0).map_err(error)?;
        parser.end().map_err(error)?;
        Ok(ty)
    }
}

/// A recursive-descent parser over ClickHouse type syntax; whitespace between tokens is skipped.
struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn skip_whitespace(&mut self) {
        self.rest = self.rest.trim_start();
    }

    /// Consumes `c` if it is the next token.
    fn eat(&mut self, c: char) -> bool {
        self.skip_whitespace();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char, context: &str) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` {context}, found {}", self.found()))
        }
    }

    /// A short description of what comes next, for error messages.
    fn found(&self) -> String {
        match self.rest.chars().next() {
            None => "the end".to_owned(),
            Some(c) => format!("`{c}`"),
        }
    }

    fn end(&mut self) -> Result<(), String> {
        self.skip_whitespace();
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("unexpected `{}` after the type", self.rest))
        }
    }

    fn ident(&mut self) -> &'a str {
        self.skip_whitespace();
        let len = self
            .rest
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(self.rest.len());
        let (ident, rest) = self.rest.split_at(len);
        self.rest = rest;
        ident
    }

    /// A small unsigned integer argument, such as a precision.
    fn number(&mut self, what: &str) -> Result<u8, String> {
        self.skip_whitespace();
        let len = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
        let (digits, rest) = self.rest.split_at(len);
        if digits.is_empty() {
            return Err(format!("expected the {what} (a number), found {}", self.found()));
        }
        self.rest = rest;
        digits.parse().map_err(|_| format!("{what} {digits} is too large"))
    }

    /// A single-quoted time zone name. The name is kept verbatim, but only characters that
    /// appear in IANA zone names are allowed, since the type is spelled into SQL placeholders.
    fn timezone(&mut self) -> Result<String, String> {
        self.expect('\'', "before the time zone")?;
        let len = self.rest.find('\'').ok_or("unterminated time zone string")?;
        let (zone, rest) = self.rest.split_at(len);
        let valid = |c: char| c.is_ascii_alphanumeric() || "_/+-:.".contains(c);
        if zone.is_empty() || !zone.chars().all(valid) {
            return Err(format!(
                "time zone '{zone}' is not a zone name like 'UTC' or 'Europe/Berlin'"
            ));
        }
        self.rest = &rest[1..];
        Ok(zone.to_owned())
    }

    fn ty(&mut self, depth: usize) -> Result<ParamType, String> {
        if depth > MAX_DEPTH {
            return Err(format!("types nested more than {MAX_DEPTH} deep"));
        }
        let name = self.ident();
        match name {
            "String" => Ok(ParamType::String),
            "Float32" => Ok(ParamType::Float32),
            "Float64" => Ok(ParamType::Float64),
            "Bool" | "Boolean" => Ok(ParamType::Bool),
            "Date" => Ok(ParamType::Date),
            "UUID" => Ok(ParamType::Uuid),
            "IPv4" => Ok(ParamType::Ipv4),
            "IPv6" => Ok(ParamType::Ipv6),
            "DateTime" => self.datetime(),
            "DateTime64" => self.datetime64(),
            "Decimal" => self.decimal(),
            "Decimal32" => self.sized_decimal(name, 9),
            "Decimal64" => self.sized_decimal(name, 18),
            "Decimal128" => self.sized_decimal(name, 38),
            "Array" => self.array(depth),
            "Nullable" => self.nullable(depth),
            _ => int(name).ok_or_else(|| unknown(name, self.found())),
        }
    }

    fn datetime(&mut self) -> Result<ParamType, String> {
        let timezone = if self.eat('(') {
            let zone = self.timezone()?;
            self.expect(')', "after the DateTime time zone")?;
            Some(zone)
        } else {
            None
        };
        Ok(ParamType::DateTime { timezone })
    }

    fn datetime64(&mut self) -> Result<ParamType, String> {
        self.expect('(', "after DateTime64 (it needs a precision)")?;
        let precision = self.number("DateTime64 precision")?;
        if precision > 9 {
            return Err(format!("DateTime64 precision {precision} is not in 0..=9"));
        }
        let timezone = if self.eat(',') { Some(self.timezone()?) } else { None };
        self.expect(')', "after the DateTime64 arguments")?;
        Ok(ParamType::DateTime64 { precision, timezone })
    }

    /// `Decimal(P, S)`, or `Decimal(P)` meaning a scale of 0 as in ClickHouse.
    fn decimal(&mut self) -> Result<ParamType, String> {
        self.expect('(', "after Decimal (it needs a precision and a scale)")?;
        let precision = self.number("Decimal precision")?;
        let scale = if self.eat(',') {
            self.number("Decimal scale")?
        } else {
            0
        };
        self.expect(')', "after the Decimal arguments")?;
        if !(1..=38).contains(&precision) {
            return Err(format!("Decimal precision {precision} is not in 1..=38"));
        }
        if scale > precision {
            return Err(format!(
                "Decimal scale {scale} is greater than its precision {precision}"
            ));
        }
        Ok(ParamType::Decimal { precision, scale })
    }

    /// `Decimal32(S)`, `Decimal64(S)` and `Decimal128(S)`: a `Decimal` of fixed precision.
    fn sized_decimal(&mut self, name: &str, precision: u8) -> Result<ParamType, String> {
        self.expect('(', &format!("after {name} (it needs a scale)"))?;
        let scale = self.number(&format!("{name} scale"))?;
        self.expect(')', &format!("after the {name} scale"))?;
        if scale > precision {
            return Err(format!("{name} scale {scale} is not in 0..={precision}"));
        }
        Ok(ParamType::Decimal { precision, scale })
    }

    fn array(&mut self, depth: usize) -> Result<ParamType, String> {
        self.expect('(', "after Array")?;
        let element = self.ty(depth + 1)?;
        self.expect(')', "after the Array element type")?;
        Ok(ParamType::Array(Box::new(element)))
    }

    fn nullable(&mut self, depth: usize) -> Result<ParamType, String> {
        self.expect('(', "after Nullable")?;
        let inner = self.ty(depth + 1)?;
        self.expect(')', "after the Nullable inner type")?;
        // ClickHouse itself refuses these; catching them here names the problem plainly.
        match inner {
            ParamType::Array(_) => Err("Nullable(Array(..)) is not allowed by ClickHouse; \
                 use Array(Nullable(..)) or an empty array"
                .to_owned()),
            ParamType::Nullable(_) => Err("Nullable(Nullable(..)) is not allowed by ClickHouse".to_owned()),
            inner => Ok(ParamType::Nullable(Box::new(inner))),
        }
    }
}

/// `Int8`..`Int64` and `UInt8`..`UInt64`.
fn int(name: &str) -> Option<ParamType> {
    let (signed, digits) = match name.strip_prefix("UInt") {
        Some(digits) => (false, digits),
        None => (true, name.strip_prefix("Int")?),
    };
    let bits = match digits {
        "8" => 8,
        "16" => 16,
        "32" => 32,
        "64" => 64,
        _ => return None,
    };
    Some(ParamType::Int { bits, signed })
}

/// The message for a name that is not a supported type, with a hint for a wrong letter case.
fn unknown(name: &str, found: String) -> String {
    if name.is_empty() {
        return format!("expected a type name, found {found}");
    }
    match NAMES.iter().find(|known| known.eq_ignore_ascii_case(name)) {
        Some(known) => format!("unknown type name `{name}` (names are case-sensitive: `{known}`)"),
        None => format!("unknown type name `{name}`"),
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamType::String => f.write_str("String"),
            ParamType::Int { bits, signed } => {
                let prefix = if *signed { "Int" } else { "UInt" };
                write!(f, "{prefix}{bits}")
            }
            ParamType::Float32 => f.write_str("Float32"),
            ParamType::Float64 => f.write_str("Float64"),
            ParamType::Decimal { precision, scale } => write!(f, "Decimal({precision}, {scale})"),
            ParamType::Bool => f.write_str("Bool"),
            ParamType::Date => f.write_str("Date"),
            ParamType::DateTime { timezone: None } => f.write_str("DateTime"),
            ParamType::DateTime { timezone: Some(zone) } => write!(f, "DateTime('{zone}')"),
            ParamType::DateTime64 {
                precision,
                timezone: None,
            } => write!(f, "DateTime64({precision})"),
            ParamType::DateTime64 {
                precision,
                timezone: Some(zone),
            } => write!(f, "DateTime64({precision}, '{zone}')"),
            ParamType::Uuid => f.write_str("UUID"),
            ParamType::Ipv4 => f.write_str("IPv4"),
            ParamType::Ipv6 => f.write_str("IPv6"),
            ParamType::Array(element) => write!(f, "Array({element})"),
            ParamType::Nullable(inner) => write!(f, "Nullable({inner})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ParamType {
        text.parse().unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    fn refuse(text: &str) -> String {
        match text.parse::<ParamType>() {
            Ok(ty) => panic!("{text:?} should be refused, parsed as {ty:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_integer_width_parses_signed_and_unsigned() {
        for bits in [8, 16, 32, 64] {
            assert_eq!(parse(&format!("Int{bits}")), ParamType::Int { bits, signed: true });
            assert_eq!(parse(&format!("UInt{bits}")), ParamType::Int { bits, signed: false });
        }
    }

    #[test]
    fn unsupported_integer_widths_are_unknown_names() {
        for text in ["Int128", "UInt256", "Int7", "Int", "UInt"] {
            assert!(refuse(text).contains("unknown type name"), "{text}");
        }
    }

    #[test]
    fn simple_names_parse_including_aliases() {
        assert_eq!(parse("String"), ParamType::String);
        assert_eq!(parse("Float32"), ParamType::Float32);
        assert_eq!(parse("Float64"), ParamType::Float64);
        assert_eq!(parse("Bool"), ParamType::Bool);
        assert_eq!(parse("Boolean"), ParamType::Bool);
        assert_eq!(parse("Date"), ParamType::Date);
        assert_eq!(parse("UUID"), ParamType::Uuid);
        assert_eq!(parse("IPv4"), ParamType::Ipv4);
        assert_eq!(parse("IPv6"), ParamType::Ipv6);
    }

    #[test]
    fn names_are_case_sensitive_with_a_hint() {
        let message = refuse("uuid");
        assert!(message.contains("case-sensitive: `UUID`"), "{message}");
        let message = refuse("string");
        assert!(message.contains("`String`"), "{message}");
        let message = refuse("boolean");
        assert!(message.contains("`Boolean`"), "{message}");
    }

    #[test]
    fn decimal_forms_parse_to_precision_and_scale() {
        assert_eq!(
            parse("Decimal(18, 2)"),
            ParamType::Decimal {
                precision: 18,
                scale: 2
            }
        );
        assert_eq!(parse("Decimal(5)"), ParamType::Decimal { precision: 5, scale: 0 });
        assert_eq!(parse("Decimal32(4)"), parse("Decimal(9, 4)"));
        assert_eq!(parse("Decimal64(18)"), parse("Decimal(18,18)"));
        assert_eq!(parse("Decimal128(0)"), parse("Decimal(38, 0)"));
        assert_eq!(parse("Decimal(1, 1)").to_string(), "Decimal(1, 1)");
    }

    #[test]
    fn decimal_with_bad_precision_or_scale_is_refused() {
        assert!(refuse("Decimal(0, 0)").contains("precision 0 is not in 1..=38"));
        assert!(refuse("Decimal(39, 2)").contains("precision 39"));
        assert!(refuse("Decimal(5, 6)").contains("scale 6 is greater than its precision 5"));
        assert!(refuse("Decimal32(10)").contains("Decimal32 scale 10 is not in 0..=9"));
        assert!(refuse("Decimal64(19)").contains("0..=18"));
        assert!(refuse("Decimal128(39)").contains("0..=38"));
        assert!(refuse("Decimal(300, 2)").contains("too large"));
        assert!(refuse("Decimal").contains("expected `(`"));
        assert!(refuse("Decimal(, 2)").contains("precision (a number)"));
        assert!(refuse("Decimal(-1, 2)").contains("precision (a number)"));
    }

    #[test]
    fn datetime_with_and_without_a_time_zone() {
        assert_eq!(parse("DateTime"), ParamType::DateTime { timezone: None });
        assert_eq!(
            parse("DateTime('Europe/Berlin')"),
            ParamType::DateTime {
                timezone: Some("Europe/Berlin".to_owned())
            }
        );
        assert_eq!(
            parse("DateTime64(3)"),
            ParamType::DateTime64 {
                precision: 3,
                timezone: None
            }
        );
        assert_eq!(
            parse("DateTime64(9, 'Etc/GMT+5')"),
            ParamType::DateTime64 {
                precision: 9,
                timezone: Some("Etc/GMT+5".to_owned())
            }
        );
    }

    #[test]
    fn whitespace_between_tokens_is_tolerated() {
        assert_eq!(parse("DateTime64(3,'UTC')"), parse("  DateTime64( 3 , 'UTC' )  "));
        assert_eq!(parse("Array( Nullable ( String ) )"), parse("Array(Nullable(String))"));
        assert_eq!(parse("Decimal( 18 ,2 )"), parse("Decimal(18, 2)"));
        assert_eq!(parse("DateTime ( 'UTC' )"), parse("DateTime('UTC')"));
    }

    #[test]
    fn datetime64_precision_must_be_at_most_9() {
        assert!(refuse("DateTime64(10)").contains("precision 10 is not in 0..=9"));
        assert!(refuse("DateTime64").contains("needs a precision"));
        assert!(refuse("DateTime64()").contains("precision (a number)"));
        assert_eq!(parse("DateTime64(0)").to_string(), "DateTime64(0)");
    }

    #[test]
    fn time_zones_must_be_quoted_zone_names() {
        assert!(refuse("DateTime(UTC)").contains("expected `'`"));
        assert!(refuse("DateTime('UTC)").contains("unterminated"));
        assert!(refuse("DateTime('')").contains("not a zone name"));
        assert!(refuse("DateTime('UTC'') --')").contains("after the DateTime time zone"));
        assert!(refuse("DateTime('a b')").contains("not a zone name"));
        assert!(refuse("DateTime64(3, '}; DROP')").contains("not a zone name"));
    }

    #[test]
    fn arrays_and_nullables_nest() {
        assert_eq!(
            parse("Array(Nullable(String))"),
            ParamType::Array(Box::new(ParamType::Nullable(Box::new(ParamType::String))))
        );
        assert_eq!(parse("Array(Array(UInt8))").to_string(), "Array(Array(UInt8))");
        assert_eq!(
            parse("Nullable(DateTime64(3, 'UTC'))").to_string(),
            "Nullable(DateTime64(3, 'UTC'))"
        );
    }

    #[test]
    fn nullable_array_and_nullable_nullable_are_refused() {
        assert!(refuse("Nullable(Array(String))").contains("Nullable(Array(..)) is not allowed"));
        assert!(refuse("Nullable(Nullable(String))").contains("Nullable(Nullable(..)) is not allowed"));
        assert!(refuse("Array(Nullable(Array(Int8)))").contains("Nullable(Array(..))"));
    }

    #[test]
    fn trailing_junk_and_truncated_input_are_refused() {
        assert!(refuse("String)").contains("unexpected `)` after the type"));
        assert!(refuse("Int32 Int32").contains("unexpected `Int32`"));
        assert!(refuse("Array(String").contains("found the end"));
        assert!(refuse("Array()").contains("expected a type name"));
        assert!(refuse("").contains("expected a type name, found the end"));
        assert!(refuse("String; DROP TABLE events").contains("unexpected"));
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{}String{}", "Array(".repeat(10_000), ")".repeat(10_000));
        assert!(refuse(&deep).contains("nested more than 16 deep"));
    }

    #[test]
    fn errors_list_the_supported_types() {
        let message = refuse("Map(String, String)");
        assert!(message.starts_with("invalid type `Map(String, String)`: unknown type name `Map`"));
        assert!(message.contains("supported types are String, Int8"));
        assert!(message.contains("Nullable(T)"));
    }

    #[test]
    fn display_gives_the_canonical_spelling() {
        let cases = [
            ("Int64", "Int64"),
            ("UInt8", "UInt8"),
            ("Decimal(18,2)", "Decimal(18, 2)"),
            ("Decimal64(2)", "Decimal(18, 2)"),
            ("DateTime( 'UTC' )", "DateTime('UTC')"),
            ("DateTime64(3,'UTC')", "DateTime64(3, 'UTC')"),
            ("DateTime64( 3 )", "DateTime64(3)"),
            ("UUID", "UUID"),
            ("IPv4", "IPv4"),
            ("IPv6", "IPv6"),
            ("Array( Nullable(String))", "Array(Nullable(String))"),
            ("Boolean", "Bool"),
            ("Date", "Date"),
            ("Float32", "Float32"),
        ];
        for (input, canonical) in cases {
            assert_eq!(parse(input).to_string(), canonical, "{input}");
            // The canonical spelling parses back to the same type.
            assert_eq!(parse(canonical), parse(input), "{input}");
        }
    }

    #[test]
    fn helpers_unwrap_nullable_and_array() {
        let ty = parse("Array(Nullable(Date))");
        assert!(!ty.is_nullable());
        assert_eq!(ty.inner(), &ty);
        assert_eq!(ty.element(), Some(&parse("Nullable(Date)")));
        assert_eq!(ty.scalar(), &ParamType::Date);
        let ty = parse("Nullable(UUID)");
        assert!(ty.is_nullable());
        assert_eq!(ty.inner(), &ParamType::Uuid);
        assert_eq!(ty.element(), None);
        assert_eq!(ty.scalar(), &ParamType::Uuid);
    }
}
