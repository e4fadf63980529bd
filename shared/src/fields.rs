//! Field validation with PostHog's (DRF's) codes and messages. Each reader reports the
//! first problem of its field as a 400 naming the field in `attr`.
use crate::error::ApiError;
use serde_json::{Map, Value};

/// A request body decoded into its fields (JSON object or form fields).
pub type Fields = Map<String, Value>;

/// How a text field is read, as DRF's `CharField` does.
#[derive(Debug, Clone, Copy)]
pub struct Text {
    pub max_length: Option<usize>,
    pub allow_blank: bool,
    pub allow_null: bool,
}

impl Text {
    pub const fn not_blank(max_length: usize) -> Self {
        Text {
            max_length: Some(max_length),
            allow_blank: false,
            allow_null: false,
        }
    }
    pub const fn blank_ok(max_length: usize) -> Self {
        Text {
            max_length: Some(max_length),
            allow_blank: true,
            allow_null: false,
        }
    }
}

fn null(attr: &str) -> ApiError {
    ApiError::validation("null", "This field may not be null.", Some(attr))
}

/// A text field, trimmed; numbers are taken as their decimal text. `Ok(None)` when absent
/// (or null where null is allowed).
pub fn text(fields: &Fields, attr: &str, rules: Text) -> Result<Option<String>, ApiError> {
    let raw = match fields.get(attr) {
        None => return Ok(None),
        Some(Value::Null) if rules.allow_null => return Ok(None),
        Some(Value::Null) => return Err(null(attr)),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(ApiError::invalid_input("Not a valid string.", Some(attr))),
    };
    let value = raw.trim().to_string();
    if value.is_empty() && !rules.allow_blank {
        return Err(ApiError::validation(
            "blank",
            "This field may not be blank.",
            Some(attr),
        ));
    }
    if let Some(max) = rules.max_length {
        if value.chars().count() > max {
            return Err(ApiError::validation(
                "max_length",
                format!("Ensure this field has no more than {max} characters."),
                Some(attr),
            ));
        }
    }
    Ok(Some(value))
}

/// A text field that must be present.
pub fn required_text(fields: &Fields, attr: &str, rules: Text) -> Result<String, ApiError> {
    if !fields.contains_key(attr) {
        return Err(ApiError::required(attr));
    }
    text(
        fields,
        attr,
        Text {
            allow_null: false,
            ..rules
        },
    )?
    .ok_or_else(|| ApiError::required(attr))
}

/// A field that must be present and not null, of any type.
pub fn required_value<'a>(fields: &'a Fields, attr: &str) -> Result<&'a Value, ApiError> {
    match fields.get(attr) {
        None => Err(ApiError::required(attr)),
        Some(Value::Null) => Err(null(attr)),
        Some(value) => Ok(value),
    }
}

/// A boolean as DRF's `BooleanField` reads it (form bodies send "true", "1", "on"...).
pub fn boolean(fields: &Fields, attr: &str) -> Result<Option<bool>, ApiError> {
    let value = match fields.get(attr) {
        None => return Ok(None),
        Some(Value::Null) => return Err(null(attr)),
        Some(v) => v,
    };
    let parsed = match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.trim() {
            "true" | "True" | "TRUE" | "t" | "T" | "y" | "Y" | "yes" | "Yes" | "YES" | "on"
            | "On" | "ON" | "1" => Some(true),
            "false" | "False" | "FALSE" | "f" | "F" | "n" | "N" | "no" | "No" | "NO" | "off"
            | "Off" | "OFF" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| ApiError::invalid_input("Must be a valid boolean.", Some(attr)))
}

/// Whether a field may be sent as `null` (DRF's `allow_null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Null {
    Allowed,
    Refused,
}

/// One of `choices`; `Ok(Some(None))` for an allowed null (or blank), `Ok(None)` when absent.
pub fn choice(
    fields: &Fields,
    attr: &str,
    choices: &[&str],
    nulls: Null,
) -> Result<Option<Option<String>>, ApiError> {
    let allow_null = nulls == Null::Allowed;
    let value = match fields.get(attr) {
        None => return Ok(None),
        Some(Value::Null) if allow_null => return Ok(Some(None)),
        Some(Value::Null) => return Err(null(attr)),
        Some(Value::String(s)) if s.is_empty() && allow_null => return Ok(Some(None)),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if choices.contains(&value.as_str()) {
        Ok(Some(Some(value)))
    } else {
        Err(ApiError::validation(
            "invalid_choice",
            format!("\"{value}\" is not a valid choice."),
            Some(attr),
        ))
    }
}

/// A JSON object (a form body may send it as JSON text). `Ok(Some(None))` for an allowed null.
pub fn object(fields: &Fields, attr: &str, nulls: Null) -> Result<Option<Option<Value>>, ApiError> {
    let allow_null = nulls == Null::Allowed;
    let value = match fields.get(attr) {
        None => return Ok(None),
        Some(Value::Null) if allow_null => return Ok(Some(None)),
        Some(Value::Null) => return Err(null(attr)),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
        Some(v) => v.clone(),
    };
    if value.is_object() && storable(&value, 0) {
        Ok(Some(Some(value)))
    } else {
        Err(ApiError::invalid_input(
            "Value must be a valid JSON object.",
            Some(attr),
        ))
    }
}

/// Whether DynamoDB can store a JSON value: nesting under its limit, no empty map keys,
/// numbers within its range.
fn storable(value: &Value, depth: usize) -> bool {
    match value {
        _ if depth > 16 => false,
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| !k.is_empty() && storable(v, depth + 1)),
        Value::Array(items) => items.iter().all(|v| storable(v, depth + 1)),
        Value::Number(n) => n
            .as_f64()
            .is_some_and(|x| x == 0.0 || (1e-120..1e120).contains(&x.abs())),
        _ => true,
    }
}

/// The name Python gives a JSON value's type, as DRF puts it in messages.
pub fn python_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// A 6-digit code sent as a string or an integer, whitespace ignored; `None` if it is not
/// six digits (a wrong code, not a malformed request).
pub fn six_digit_code(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.chars().filter(|c| !c.is_whitespace()).collect::<String>(),
        Value::Number(n) if n.is_u64() => format!("{:06}", n.as_u64()?),
        _ => return None,
    };
    (text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Fields {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn text_rules() {
        let f = fields(
            json!({"a": "  x  ", "b": "   ", "c": null, "d": 12, "e": true, "f": "é".repeat(3)}),
        );
        assert_eq!(
            text(&f, "a", Text::not_blank(5)).unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(
            text(&f, "b", Text::not_blank(5)).unwrap_err().body()["code"],
            "blank"
        );
        assert_eq!(
            text(&f, "c", Text::not_blank(5)).unwrap_err().body()["code"],
            "null"
        );
        assert_eq!(
            text(&f, "d", Text::not_blank(5)).unwrap().as_deref(),
            Some("12")
        );
        assert_eq!(
            text(&f, "e", Text::not_blank(5)).unwrap_err().body()["code"],
            "invalid_input"
        );
        assert!(
            text(&f, "f", Text::not_blank(3)).is_ok(),
            "length counts characters, not bytes"
        );
        assert_eq!(
            text(&f, "f", Text::not_blank(2)).unwrap_err().body()["detail"],
            "Ensure this field has no more than 2 characters."
        );
        assert_eq!(
            required_text(&f, "zz", Text::not_blank(5)).unwrap_err(),
            ApiError::required("zz")
        );
    }

    #[test]
    fn codes() {
        assert_eq!(
            six_digit_code(&json!(" 123 456 ")).as_deref(),
            Some("123456")
        );
        assert_eq!(six_digit_code(&json!(12345)).as_deref(), Some("012345"));
        assert_eq!(six_digit_code(&json!("12345a")), None);
        assert_eq!(six_digit_code(&json!(1234567)), None);
        assert_eq!(six_digit_code(&json!(true)), None);
    }
}
