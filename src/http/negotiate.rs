//! Choosing the result format: `?format=` wins, then the `Accept` header, then JSON.

use crate::catalog::Endpoint;
use crate::catalog::format::OutputFormat;

/// The format to answer in, or the 406 message listing what the endpoint offers.
pub fn choose_format(
    endpoint: &Endpoint,
    format_param: Option<&str>,
    accept: Option<&str>,
) -> Result<OutputFormat, String> {
    let offered = endpoint.formats();
    let list = || offered.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
    if let Some(name) = format_param {
        return match name.parse::<OutputFormat>() {
            Ok(format) if offered.contains(&format) => Ok(format),
            _ => Err(format!(
                "format {:?} is not available here; choose one of: {}",
                crate::text::shorten(name),
                list()
            )),
        };
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return default_format(offered).ok_or_else(|| format!("choose one of: {}", list()));
    };
    // Media ranges in order of preference (q-values), first offered one wins.
    let mut ranges: Vec<(f32, &str)> = accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, media)
        })
        .filter(|(q, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, media) in ranges {
        if media == "text/*" && offered.contains(&OutputFormat::Csv) {
            return Ok(OutputFormat::Csv);
        }
        if matches!(media, "*/*" | "application/*")
            && let Some(format) = default_format(offered)
        {
            return Ok(format);
        }
        if let Some(format) = OutputFormat::from_media_type(media).filter(|f| offered.contains(f)) {
            return Ok(format);
        }
    }
    Err(format!(
        "none of the accepted media types is available; this endpoint offers: {}",
        list()
    ))
}

fn default_format(offered: &[OutputFormat]) -> Option<OutputFormat> {
    if offered.contains(&OutputFormat::Json) {
        Some(OutputFormat::Json)
    } else {
        offered.first().copied()
    }
}
