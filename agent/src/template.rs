//! Templated values in scenarios (`{{user.id}}`, `{{vars.base_url}}`, `{{order}}`): parsed
//! by the model ([`murmuration_model::template`]); rendered for an engine [`User`], which
//! is the template's context here.

pub use murmuration_model::template::{JsonTemplate, Template, TemplateContext, TemplateError};

use crate::scenario::User;

impl TemplateContext for User {
    fn user_id(&self) -> u64 {
        self.id()
    }

    fn iteration(&self) -> u64 {
        User::iteration(self)
    }

    fn with_var<R>(&self, name: &str, f: impl FnOnce(Option<&serde_json::Value>) -> R) -> R {
        f(self.env().vars.load().get(name))
    }

    fn local(&self, name: &str) -> Option<&serde_json::Value> {
        self.locals.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::test_user;

    #[test]
    fn a_user_renders_its_id_vars_and_locals() {
        let mut user = test_user(17, serde_json::json!({"base": "http://x:1", "n": 5}));
        user.locals.insert("order".into(), serde_json::json!("A-9"));
        let t = Template::parse("{{vars.base}}/u/{{ user.id }}/o/{{order}}?n={{vars.n}}").unwrap();
        assert_eq!(t.render(&user), "http://x:1/u/17/o/A-9?n=5");
        let j = JsonTemplate::parse(&serde_json::json!({"u": "{{user.id}}", "n": "{{vars.n}}"}))
            .unwrap();
        assert_eq!(j.render(&user), serde_json::json!({"u": 17, "n": 5}));
    }
}
