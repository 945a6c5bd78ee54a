//! Templated values in scenarios: `{{user.id}}`, `{{user.iteration}}`, `{{vars.base_url}}`,
//! the wall-clock time of rendering (`{{time.unix_ms}}`, `{{time.unix_us}}`: a request's
//! send time, for `sentAt` fields and for the target to measure delivery), and a user's own
//! values (`{{order}}` from `extract`, `{{group.ids}}` from a coordinator).
//!
//! Templates are parsed once when the plan is built; rendering is a walk over the parsed
//! parts, and a template without placeholders renders as the stored text, with no work.
//! Rendering reads a [`TemplateContext`] (the engine's user implements it), so the model
//! knows nothing of how users run.

use std::fmt::Write as _;

/// What a template is rendered for: a user's id, iteration, the test's variables and the
/// user's own values.
pub trait TemplateContext {
    /// The user's id (`{{user.id}}`).
    fn user_id(&self) -> u64;
    /// Which run of the scenario this is (`{{user.iteration}}`).
    fn iteration(&self) -> u64;
    /// Calls `f` with the test variable `name` (`{{vars.NAME}}`), or `None`. A callback,
    /// because variables can change while the test runs and are read without copying.
    fn with_var<R>(&self, name: &str, f: impl FnOnce(Option<&serde_json::Value>) -> R) -> R;
    /// The user's own value `name` (`{{order}}`, `{{group.ids}}`).
    fn local(&self, name: &str) -> Option<&serde_json::Value>;
}

/// A template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without a matching `}}`.
    #[error("\"{{{{\" at byte {0} is not closed by \"}}}}\"")]
    Unclosed(usize),
    /// `{{}}` or a name with characters a name cannot have.
    #[error(
        "{0:?} is not a placeholder: use user.id, user.iteration, time.unix_ms, time.unix_us, vars.NAME or NAME"
    )]
    BadName(String),
}

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    UserId,
    Iteration,
    /// Milliseconds since the Unix epoch, when rendered.
    UnixMs,
    /// Microseconds since the Unix epoch, when rendered.
    UnixUs,
    Var(String),
    Local(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The source, kept for messages.
    source: String,
}

impl Template {
    /// Parses `source`.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or(TemplateError::Unclosed(offset + start))?;
            let name = after[..end].trim();
            parts.push(parse_name(name)?);
            let consumed = start + 2 + end + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            parts,
            source: source.to_owned(),
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// True when the template has no placeholder: it always renders as its source.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The variables (`vars.NAME`) it uses, for validation.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Renders a template that uses only `vars.NAME` (and text) with `vars`, to check what
    /// it gives before any user runs; `None` when it uses anything else (user values,
    /// the time) or a variable `vars` lacks.
    pub fn render_with_vars(
        &self,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => push_value(vars.get(name)?, &mut out),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Renders for `user`, appending to `out`. A missing value renders as nothing; plans are
    /// validated so that `vars.NAME` always exists, and a missing user value is the
    /// scenario's own doing (e.g. an extract that failed and was already counted).
    pub fn render_into<C: TemplateContext>(&self, user: &C, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::UserId => {
                    let _ = write!(out, "{}", user.user_id());
                }
                Part::Iteration => {
                    let _ = write!(out, "{}", user.iteration());
                }
                Part::UnixMs => {
                    let _ = write!(out, "{}", unix_time().as_millis());
                }
                Part::UnixUs => {
                    let _ = write!(out, "{}", unix_time().as_micros());
                }
                Part::Var(name) => user.with_var(name, |v| {
                    if let Some(v) = v {
                        push_value(v, out);
                    }
                }),
                Part::Local(name) => {
                    if let Some(v) = user.local(name) {
                        push_value(v, out);
                    }
                }
            }
        }
    }

    /// Renders for `user` into a new string.
    pub fn render<C: TemplateContext>(&self, user: &C) -> String {
        if let [Part::Text(t)] = self.parts.as_slice() {
            return t.clone();
        }
        let mut s = String::with_capacity(self.source.len() + 16);
        self.render_into(user, &mut s);
        s
    }

    /// Renders a template that is exactly one placeholder as the JSON value itself (so that
    /// `json: {user: "{{user.id}}"}` sends a number), or as a string otherwise.
    pub fn render_json<C: TemplateContext>(&self, user: &C) -> serde_json::Value {
        match self.parts.as_slice() {
            [Part::UserId] => user.user_id().into(),
            [Part::Iteration] => user.iteration().into(),
            [Part::UnixMs] => (unix_time().as_millis() as u64).into(),
            [Part::UnixUs] => (unix_time().as_micros() as u64).into(),
            [Part::Var(name)] => {
                user.with_var(name, |v| v.cloned().unwrap_or(serde_json::Value::Null))
            }
            [Part::Local(name)] => user.local(name).cloned().unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::String(self.render(user)),
        }
    }
}

fn parse_name(name: &str) -> Result<Part, TemplateError> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !valid(name) {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    Ok(match name {
        "user.id" => Part::UserId,
        "user.iteration" => Part::Iteration,
        "time.unix_ms" => Part::UnixMs,
        "time.unix_us" => Part::UnixUs,
        n if n.starts_with("vars.") && valid(&n[5..]) => Part::Var(n[5..].to_owned()),
        n if n.starts_with("user.") || n.starts_with("time.") => {
            return Err(TemplateError::BadName(n.to_owned()))
        }
        n => Part::Local(n.to_owned()),
    })
}

/// Time since the Unix epoch (zero for a clock set before it).
fn unix_time() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn push_value(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => out.push_str(s),
        serde_json::Value::Null => {}
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// A JSON value whose strings may be templates.
#[derive(Debug, Clone)]
pub enum JsonTemplate {
    /// A value without any template.
    Fixed(serde_json::Value),
    /// A templated string.
    Text(Template),
    /// An array with templated members.
    Array(Vec<JsonTemplate>),
    /// An object with templated members.
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    /// Parses every string of `value` as a template.
    pub fn parse(value: &serde_json::Value) -> Result<JsonTemplate, TemplateError> {
        use serde_json::Value;
        Ok(match value {
            Value::String(s) => {
                let t = Template::parse(s)?;
                if t.is_static() {
                    JsonTemplate::Fixed(value.clone())
                } else {
                    JsonTemplate::Text(t)
                }
            }
            Value::Array(items) => {
                let items = items
                    .iter()
                    .map(JsonTemplate::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|i| matches!(i, JsonTemplate::Fixed(_))) {
                    JsonTemplate::Fixed(value.clone())
                } else {
                    JsonTemplate::Array(items)
                }
            }
            Value::Object(map) => {
                let fields = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), JsonTemplate::parse(v)?)))
                    .collect::<Result<Vec<_>, TemplateError>>()?;
                if fields
                    .iter()
                    .all(|(_, i)| matches!(i, JsonTemplate::Fixed(_)))
                {
                    JsonTemplate::Fixed(value.clone())
                } else {
                    JsonTemplate::Object(fields)
                }
            }
            other => JsonTemplate::Fixed(other.clone()),
        })
    }

    /// True when no string in it is a template.
    pub fn is_static(&self) -> bool {
        matches!(self, JsonTemplate::Fixed(_))
    }

    /// Every template in it.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            JsonTemplate::Fixed(_) => vec![],
            JsonTemplate::Text(t) => vec![t],
            JsonTemplate::Array(items) => items.iter().flat_map(|i| i.templates()).collect(),
            JsonTemplate::Object(fields) => {
                fields.iter().flat_map(|(_, i)| i.templates()).collect()
            }
        }
    }

    /// The value for `user`.
    pub fn render<C: TemplateContext>(&self, user: &C) -> serde_json::Value {
        match self {
            JsonTemplate::Fixed(v) => v.clone(),
            JsonTemplate::Text(t) => t.render_json(user),
            JsonTemplate::Array(items) => items.iter().map(|i| i.render(user)).collect(),
            JsonTemplate::Object(fields) => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(user)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user as a template sees it: an id, variables and own values.
    struct TestUser {
        id: u64,
        vars: serde_json::Map<String, serde_json::Value>,
        locals: Vec<(String, serde_json::Value)>,
    }

    impl TemplateContext for TestUser {
        fn user_id(&self) -> u64 {
            self.id
        }
        fn iteration(&self) -> u64 {
            0
        }
        fn with_var<R>(&self, name: &str, f: impl FnOnce(Option<&serde_json::Value>) -> R) -> R {
            f(self.vars.get(name))
        }
        fn local(&self, name: &str) -> Option<&serde_json::Value> {
            self.locals.iter().find(|(n, _)| n == name).map(|(_, v)| v)
        }
    }

    fn test_user(id: u64, vars: serde_json::Value) -> TestUser {
        TestUser {
            id,
            vars: vars.as_object().cloned().unwrap_or_default(),
            locals: Vec::new(),
        }
    }

    #[test]
    fn renders_user_vars_and_locals() {
        let mut user = test_user(17, serde_json::json!({"base": "http://x:1", "n": 5}));
        user.locals.push(("order".into(), serde_json::json!("A-9")));
        let t = Template::parse("{{vars.base}}/u/{{ user.id }}/o/{{order}}?n={{vars.n}}").unwrap();
        assert_eq!(t.render(&user), "http://x:1/u/17/o/A-9?n=5");
        assert!(!t.is_static());
        assert_eq!(t.vars().collect::<Vec<_>>(), ["base", "n"]);
        assert!(Template::parse("/plain").unwrap().is_static());
    }

    #[test]
    fn time_is_the_wall_clock_when_rendered() {
        let user = test_user(1, serde_json::json!({}));
        let before = unix_time();
        let us: u128 = Template::parse("{{time.unix_us}}")
            .unwrap()
            .render(&user)
            .parse()
            .unwrap();
        let ms = JsonTemplate::parse(&serde_json::json!({"at": "{{time.unix_ms}}"}))
            .unwrap()
            .render(&user)["at"]
            .as_u64()
            .unwrap();
        let after = unix_time();
        assert!(before.as_micros() <= us && us <= after.as_micros());
        assert!(before.as_millis() as u64 <= ms && ms <= after.as_millis() as u64);
        assert!(matches!(
            Template::parse("{{time.now}}"),
            Err(TemplateError::BadName(_))
        ));
    }

    #[test]
    fn single_placeholder_json_keeps_its_type() {
        let user = test_user(3, serde_json::json!({"flag": true}));
        let j = JsonTemplate::parse(&serde_json::json!({"user": "{{user.id}}", "f": "{{vars.flag}}", "s": "u{{user.id}}", "k": 1})).unwrap();
        assert_eq!(
            j.render(&user),
            serde_json::json!({"user": 3, "f": true, "s": "u3", "k": 1})
        );
        assert!(JsonTemplate::parse(&serde_json::json!({"a": [1, "x"]}))
            .unwrap()
            .is_static());
    }

    #[test]
    fn bad_templates_say_why() {
        assert_eq!(
            Template::parse("/a/{{user.id").unwrap_err(),
            TemplateError::Unclosed(3)
        );
        assert!(matches!(
            Template::parse("{{}}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{{user.name}}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{{a b}}"),
            Err(TemplateError::BadName(_))
        ));
    }
}
