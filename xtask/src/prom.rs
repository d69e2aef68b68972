//! The one Prometheus text-format reader of the harness (scrape, read one sample, a family's sum
//! or its values by label), and the one way the checks compress Prometheus durations.
//!
//! It reads what the checks need (name, labels, value) and skips comments; a line it cannot
//! read is an error, so a malformed exposition fails the check instead of reading as zero.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, ensure};

/// One sample: name, labels in exposition order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut out = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            out.push(parse_line(line).with_context(|| format!("unreadable exposition line {line:?}"))?);
        }
        Ok(Metrics(out))
    }

    /// The sample of `name` whose labels include every pair of `labels`, summed when several
    /// match (so `sample("x", &[])` is the family's sum); 0 when none does.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| {
                s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The family's sum over every series.
    pub fn sum(&self, name: &str) -> f64 {
        self.sample(name, &[])
    }

    /// `name` summed by the value of `label`, sorted by value.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out = BTreeMap::<String, f64>::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            if let Some((_, v)) = s.labels.iter().find(|(k, _)| k == label) {
                *out.entry(v.clone()).or_default() += s.value;
            }
        }
        out.into_iter().collect()
    }

    /// Whether any sample of `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).context("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, value) = body.split_once('=').context("a label without a value")?;
            ensure!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "label name {key:?}");
            // A label value is quoted and escaped as a JSON string is (`\\`, `\"`, `\n`).
            let mut json = serde_json::Deserializer::from_str(value).into_iter::<String>();
            labels.push((key.to_owned(), json.next().context("labels not closed")??));
            body = &value[json.byte_offset()..];
        }
    }
    let value = match rest.split_whitespace().next().context("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample { name: name.to_owned(), labels, value })
}

/// One scrape of a `/metrics` URL.
pub async fn scrape(url: &str) -> Result<Metrics> {
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    Metrics::parse(&text)
}

/// A Prometheus duration (`30s`, `5m`, `1h30m`, `250ms`: promql-parser reads it) divided by
/// `factor`, at least `min_ms`, in milliseconds: how the alert and autoscaling checks compress
/// time without editing a rule.
pub fn scale_duration(d: &str, factor: f64, min_ms: f64) -> Result<String> {
    // A subquery's `5m:1m` is no duration, so it is refused rather than scaled.
    let d = promql_parser::util::parse_duration(d).map_err(|e| anyhow!("duration {d:?}: {e}"))?;
    Ok(format!("{}ms", (d.as_secs_f64() * 1e3 / factor).max(min_ms).round()))
}

/// Every `[range]` of a PromQL expression scaled by [`scale_duration`].
pub fn scale_ranges(expr: &str, factor: f64, min_ms: f64) -> Result<String> {
    let (mut out, mut rest) = (String::new(), expr);
    while let Some((head, tail)) = rest.split_once('[') {
        let (range, after) = tail.split_once(']').context("[ without ]")?;
        out += &format!("{head}[{}]", scale_duration(range, factor, min_ms)?);
        rest = after;
    }
    Ok(out + rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_with_escapes_and_sums_a_family() -> Result<()> {
        let m = Metrics::parse(
            "# HELP x y\nshout_answers_total{source=\"cache\"} 3\nshout_answers_total{source=\"a,\\\"b\\\"\",z=\"1\"} 4\nup 1\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 7\nh_bucket{le=\"1\",x=\"y\"} 3\n",
        )?;
        assert_eq!(m.sample("shout_answers_total", &[("source", "cache")]), 3.0);
        assert_eq!(m.sample("shout_answers_total", &[("source", "a,\"b\"")]), 4.0);
        assert_eq!(m.sum("shout_answers_total"), 7.0);
        assert_eq!(m.by_label("shout_answers_total", "z"), vec![("1".to_owned(), 4.0)]);
        assert_eq!(m.sample("h_bucket", &[("le", "+Inf")]), 7.0);
        assert_eq!(m.by_label("h_bucket", "le"), vec![("+Inf".to_owned(), 7.0), ("1".to_owned(), 5.0)]);
        assert_eq!(m.sum("up"), 1.0);
        let escaped = Metrics::parse("x{a=\"p\\\\q\\nr\"} 1 1700000000000\n")?;
        assert_eq!(escaped.0[0].labels, vec![("a".to_owned(), "p\\q\nr".to_owned())]);
        assert_eq!(escaped.0[0].value, 1.0);
        Ok(())
    }

    #[test]
    fn ranges_are_scaled_and_subqueries_refused() -> Result<()> {
        let expr = "rate(a[5m]) / rate(b[1h]) > on () c[30s]";
        assert_eq!(scale_ranges(expr, 30.0, 4000.0)?, "rate(a[10000ms]) / rate(b[120000ms]) > on () c[4000ms]");
        assert_eq!(scale_duration("250ms", 10.0, 0.0)?, "25ms");
        assert!(scale_ranges("max_over_time(x[5m:1m])", 30.0, 0.0).is_err());
        Ok(())
    }

    #[test]
    fn a_malformed_line_is_an_error() {
        assert!(Metrics::parse("x{a=\"1\" 2\n").is_err());
        assert!(Metrics::parse("x notanumber\n").is_err());
        assert!(Metrics::parse("x{a!=\"1\"} 2\n").is_err());
        assert!(Metrics::parse("x{a=1} 2\n").is_err());
    }
}
