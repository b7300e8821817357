//! The names of what the engine finds. A kind is a small integer inside the engine (an
//! index into [`BUILTIN_KINDS`], then the custom rules in configuration order) and its
//! name everywhere else: in counts, styles, `disabled` and the reveal header.

/// Index of a kind: a built-in one below [`BUILTIN_COUNT`], then the custom rules.
pub(crate) type Kind = usize;

pub(crate) const AWS_ACCESS_KEY_ID: Kind = 0;
pub(crate) const AWS_SECRET_ACCESS_KEY: Kind = 1;
pub(crate) const GITHUB_TOKEN: Kind = 2;
pub(crate) const SLACK_TOKEN: Kind = 3;
pub(crate) const STRIPE_KEY: Kind = 4;
pub(crate) const GOOGLE_API_KEY: Kind = 5;
pub(crate) const JWT: Kind = 6;
pub(crate) const PRIVATE_KEY: Kind = 7;
pub(crate) const PASSWORD_IN_URL: Kind = 8;
pub(crate) const EMAIL: Kind = 9;
pub(crate) const CREDIT_CARD: Kind = 10;
pub(crate) const US_SSN: Kind = 11;
pub(crate) const IBAN: Kind = 12;
pub(crate) const PHONE: Kind = 13;
pub(crate) const SENSITIVE_FIELD: Kind = 14;
pub(crate) const COMMAND_LINE_PASSWORD: Kind = 15;

/// The built-in kinds, indexed by [`Kind`].
pub(crate) const BUILTIN_KINDS: [&str; 16] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "google_api_key",
    "jwt",
    "private_key",
    "password_in_url",
    "email",
    "credit_card",
    "us_ssn",
    "iban",
    "phone",
    "sensitive_field",
    "command_line_password",
];

pub(crate) const BUILTIN_COUNT: usize = BUILTIN_KINDS.len();

/// The kind of a built-in detector, by name.
pub(crate) fn builtin_kind(name: &str) -> Option<Kind> {
    BUILTIN_KINDS.iter().position(|k| *k == name)
}
