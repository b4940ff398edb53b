//! Text templates of the classifier formats: `{prompt}` and `{response}`
//! placeholders in literal text (no escapes).

use std::ops::Range;

use crate::{ModelError, Result};

/// A text template with `{prompt}` and `{response}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Prompt,
    Response,
}

/// A rendered template: the text and where the prompt and response lie in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedText {
    /// The model input text.
    pub text: String,
    /// Byte range of the prompt (absent when the template has no `{prompt}`).
    pub prompt: Option<Range<usize>>,
    /// Byte range of the response.
    pub response: Range<usize>,
}

impl TextTemplate {
    /// Parses a template: exactly one `{response}`, at most one `{prompt}`;
    /// everything else is literal text.
    pub fn parse(source: &str) -> Result<Self> {
        let mut parts = Vec::new();
        let mut rest = source;
        let (mut prompts, mut responses) = (0, 0);
        loop {
            let next = [("{prompt}", Part::Prompt), ("{response}", Part::Response)]
                .into_iter()
                .filter_map(|(pat, part)| rest.find(pat).map(|at| (at, pat.len(), part)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, len, part)) = next else {
                if !rest.is_empty() {
                    parts.push(Part::Text(rest.to_string()));
                }
                break;
            };
            if at > 0 {
                parts.push(Part::Text(rest[..at].to_string()));
            }
            match part {
                Part::Prompt => prompts += 1,
                Part::Response => responses += 1,
                Part::Text(_) => {}
            }
            parts.push(part);
            rest = &rest[at + len..];
        }
        if responses != 1 || prompts > 1 {
            return Err(ModelError::Unsupported(format!(
                "text template {source:?}: needs exactly one {{response}} and at most one {{prompt}} \
                 (found {responses} and {prompts})"
            )));
        }
        Ok(Self { source: source.to_string(), parts })
    }

    /// The template as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Substitutes the texts (placeholders inside them are not expanded).
    pub fn render(&self, prompt: &str, response: &str) -> RenderedText {
        let mut text = String::with_capacity(self.source.len() + prompt.len() + response.len());
        let (mut p, mut r) = (None, 0..0);
        for part in &self.parts {
            let start = text.len();
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Prompt => {
                    text.push_str(prompt);
                    p = Some(start..text.len());
                }
                Part::Response => {
                    text.push_str(response);
                    r = start..text.len();
                }
            }
        }
        RenderedText { text, prompt: p, response: r }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scorer::PKU_TEMPLATE;

    #[test]
    fn template_parses_and_renders_ranges() -> Result<()> {
        let t = TextTemplate::parse(PKU_TEMPLATE)?;
        let r = t.render("Hi {response}", "Hello");
        assert_eq!(r.text, "BEGINNING OF CONVERSATION: USER: Hi {response} ASSISTANT:Hello");
        assert_eq!(&r.text[r.prompt.clone().unwrap()], "Hi {response}");
        assert_eq!(&r.text[r.response.clone()], "Hello");
        let t = TextTemplate::parse("{response}")?;
        assert_eq!(t.render("p", "").response, 0..0);
        assert!(TextTemplate::parse("{prompt} only").is_err());
        assert!(TextTemplate::parse("{response}{response}").is_err());
        assert!(TextTemplate::parse("{prompt}{prompt}{response}").is_err());
        Ok(())
    }
}
