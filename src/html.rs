//! Jupyter's rich display (`_repr_html_`): a record as a two-column table. Values are escaped; task
//! tokens appear only as fingerprints, like everywhere else.

use std::fmt::Write;

/// Escape text for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A table cell of `text`: one without spaces (an id, a fingerprint) never wraps mid-token; prose wraps.
pub fn cell(text: &str) -> String {
    if text.chars().any(char::is_whitespace) {
        format!("<td>{}</td>", escape(text))
    } else {
        format!("<td style=\"white-space:nowrap\">{}</td>", escape(text))
    }
}

/// A titled table of field/value rows; rows without a value are left out.
pub fn record(title: &str, rows: &[(&str, Option<String>)]) -> String {
    let mut html = format!(
        "<table class=\"stigmer-handshake\"><thead><tr><th colspan=\"2\" style=\"text-align:left\">{}</th></tr></thead><tbody>",
        escape(title)
    );
    for (field, value) in rows {
        if let Some(value) = value {
            let _ = write!(html, "<tr><td>{}</td>{}</tr>", escape(field), cell(value));
        }
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_escaped_and_empty_rows_dropped() {
        let html = super::record("<x>", &[("a", Some("<script>&\"'".into())), ("b", None)]);
        assert!(html.contains("&lt;script&gt;&amp;&quot;&#39;"));
        assert!(html.contains("&lt;x&gt;"));
        assert!(!html.contains("<td>b</td>"));
        assert!(super::cell("tok-1f2e").contains("nowrap") && !super::cell("two words").contains("nowrap"));
    }
}
