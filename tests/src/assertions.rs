//! What a test expects the API to answer, by name: each assertion here checks the status, the
//! whole error envelope and the content type, as [`Reply::assert_error`] does, so a test says
//! `reply.assert_required("token")` where it would otherwise spell out the five parts.
use crate::Reply;
use serde_json::json;

/// The detail of a wrong, expired or unknown email-change code.
pub const WRONG_EMAIL_CODE: &str = "This verification code is invalid or has expired.";

impl Reply {
    /// A 400 `validation_error` with this code and detail on the field `attr`.
    #[track_caller]
    pub fn assert_invalid(&self, attr: &str, code: &str, detail: &str) {
        self.assert_error(400, "validation_error", code, detail, Some(attr));
    }

    /// A 400 `validation_error` with this code and detail about no one field (`attr` null).
    #[track_caller]
    pub fn assert_validation_error(&self, code: &str, detail: &str) {
        self.assert_error(400, "validation_error", code, detail, None);
    }

    /// A 400: the field `attr` is missing.
    #[track_caller]
    pub fn assert_required(&self, attr: &str) {
        self.assert_invalid(attr, "required", "This field is required.");
    }

    /// A 400: the field `attr` is empty (or only white space).
    #[track_caller]
    pub fn assert_blank(&self, attr: &str) {
        self.assert_invalid(attr, "blank", "This field may not be blank.");
    }

    /// A 400: the field `attr` is null.
    #[track_caller]
    pub fn assert_null(&self, attr: &str) {
        self.assert_invalid(attr, "null", "This field may not be null.");
    }

    /// A 400: the field `attr` is longer than `max` characters.
    #[track_caller]
    pub fn assert_max_length(&self, attr: &str, max: usize) {
        self.assert_invalid(
            attr,
            "max_length",
            &format!("Ensure this field has no more than {max} characters."),
        );
    }

    /// A 400: `value` is not one of the field `attr`'s choices.
    #[track_caller]
    pub fn assert_invalid_choice(&self, attr: &str, value: &str) {
        self.assert_invalid(
            attr,
            "invalid_choice",
            &format!("\"{value}\" is not a valid choice."),
        );
    }

    /// A 400: the JSON setting `attr` is over its 16 KiB bound.
    #[track_caller]
    pub fn assert_setting_too_large(&self, attr: &str) {
        self.assert_invalid(
            attr,
            "invalid_input",
            "Ensure this value is no larger than 16 KiB.",
        );
    }

    /// A 400: the body is JSON but not an object (`got`: Python's name of what it is).
    #[track_caller]
    pub fn assert_not_a_dictionary(&self, got: &str) {
        self.assert_validation_error(
            "invalid_input",
            &format!("Invalid data. Expected a dictionary, but got {got}."),
        );
    }

    /// A 400 `parse_error`: the body is not JSON (the detail's tail is the parser's).
    #[track_caller]
    pub fn assert_parse_error(&self) {
        self.assert_error_prefix(
            400,
            "invalid_request",
            "parse_error",
            "JSON parse error - ",
            None,
        );
    }

    /// A 413 `request_too_large`.
    #[track_caller]
    pub fn assert_request_too_large(&self) {
        self.assert_error_prefix(413, "invalid_request", "request_too_large", "", None);
    }

    /// A 405 for `method`.
    #[track_caller]
    pub fn assert_method_not_allowed(&self, method: &str) {
        self.assert_error(
            405,
            "invalid_request",
            "method_not_allowed",
            &format!("Method \"{method}\" not allowed."),
            None,
        );
    }

    /// A 200 `{"success": true}`.
    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(
            self.ok_json(),
            json!({"success": true}),
            "body: {}",
            self.body
        );
    }

    /// A 429 whose `Retry-After` (and detail) lies in `range`; returns it.
    #[track_caller]
    pub fn assert_throttled(&self, range: std::ops::RangeInclusive<u64>) -> u64 {
        assert_eq!(self.status, 429, "{}", self.body);
        let retry: u64 = self
            .header("retry-after")
            .expect("a Retry-After header")
            .parse()
            .expect("Retry-After is a number of seconds");
        assert!(
            range.contains(&retry),
            "Retry-After {retry} not in {range:?}"
        );
        self.assert_error(
            429,
            "throttled_error",
            "throttled",
            &format!("Request was throttled. Expected available in {retry} seconds."),
            None,
        );
        retry
    }

    // --- email changes -----------------------------------------------------------------------

    /// A 400: the address is not a valid email address.
    #[track_caller]
    pub fn assert_invalid_email(&self) {
        self.assert_invalid("email", "invalid_input", "Enter a valid email address.");
    }

    /// A 400: another account has the address.
    #[track_caller]
    pub fn assert_email_taken(&self) {
        self.assert_invalid(
            "email",
            "unique",
            "There is already an account with this email address.",
        );
    }

    /// A 400: the email-change code is wrong, or there is no open request for it.
    #[track_caller]
    pub fn assert_wrong_email_code(&self) {
        self.assert_invalid("code", "invalid_input", WRONG_EMAIL_CODE);
    }

    /// A 400: the user has no open email-change request to cancel.
    #[track_caller]
    pub fn assert_no_email_change_request(&self) {
        self.assert_validation_error(
            "email_change_request_not_found",
            "No active email change requests found.",
        );
    }

    // --- 2FA ---------------------------------------------------------------------------------

    /// A 400: the TOTP or backup code is not valid.
    #[track_caller]
    pub fn assert_token_invalid(&self) {
        self.assert_validation_error("token_invalid", "Token is not valid");
    }

    /// A 400: there is no (live) pending setup to confirm.
    #[track_caller]
    pub fn assert_setup_expired(&self) {
        self.assert_validation_error(
            "setup_expired",
            "2FA setup session expired. Please start setup again.",
        );
    }

    /// A 400: the route needs 2FA enabled.
    #[track_caller]
    pub fn assert_2fa_not_enabled(&self) {
        self.assert_validation_error("2fa_not_enabled", "2FA must be enabled first");
    }

    /// A 401 refusing a sign-in token, with RFC 6750's `error="invalid_token"` and this detail.
    #[track_caller]
    pub fn assert_invalid_token(&self, detail: &str) {
        self.assert_error(
            401,
            "authentication_error",
            "authentication_failed",
            detail,
            None,
        );
        assert_eq!(
            self.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{}",
            self.body
        );
    }
}
