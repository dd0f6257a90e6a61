//! How one job is laid out in Redis, chosen by measurement (`vidx bench scale`, README "Sizing").
//!
//! Jobs are numbered within their pass (`n` = 1, 2, ...; the job id is `{pass_id}.{n}`), and the
//! records of 64 consecutive jobs share one Redis hash, `P:j:{pass}:{n / 64}`. A hash that small
//! with short values stays in Redis's listpack encoding (`hash-max-listpack-entries` 128,
//! `hash-max-listpack-value` 64 by default), where a field costs its bytes plus two or three, not
//! the ~50 bytes of overhead of a key or of a hashtable entry. Each job has up to three fields:
//!
//! - `{slot}`: `{state}{attempt}{counts}|{where}`: the state as one letter ([`state_code`]), the
//!   attempt count, the rare counts (`c{crashes}` and `k{panics}`, each only when above zero, so a
//!   job that never crashed or panicked pays nothing for them), and `where` = JSON
//!   `[url, start_s, end_s, probe]`, the URL relative to the pass's base (see [`encode_url`]);
//! - `{slot}v`: JSON `[size_bytes, etag]`, what the video looked like when listed. The worker
//!   needs it to read the video; once the job is done, the evidence document records it, so it is
//!   dropped;
//! - `{slot}r`: a done job's result, stored against the pass's first result as a template (see
//!   [`encode_result`]): for evidence documents only the video id differs between two results.
//!
//! Planning also keeps a de-duplication index (`P:d:{pass}:{bucket}`, 2^17 buckets by identity
//! hash, 8-byte fields) so that re-adding a video is a no-op; it is dropped when planning ends.
//! Lua scripts read only the `{state}{attempt}{counts}|` head and pass the rest along untouched
//! (`prelude.lua` `read_job`: its `rest` is `{counts}|{where}`); the `where` part is encoded and
//! decoded here, in one place.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};
use vidx_core::domain::{JobState, NewJob};

/// Jobs whose records share one Redis hash. A job has two fields at most at any time (`v` before
/// it is done, `r` after), so a full bucket has at most 128 fields and stays a listpack.
pub const JOBS_PER_BUCKET: u64 = 64;

/// Bits of the identity hash that pick a de-duplication bucket: 2^17 buckets hold about 16 million
/// jobs per pass before an average bucket passes 128 entries.
pub const DEDUP_BUCKET_BITS: u32 = 17;

/// Number of de-duplication buckets.
pub const DEDUP_BUCKETS: u32 = 1 << DEDUP_BUCKET_BITS;

/// The one-letter code of a state in a job record, shared with the Lua scripts (`prelude.lua`).
pub fn state_code(state: JobState) -> char {
    match state {
        JobState::Pending => 'p',
        JobState::Leased => 'l',
        JobState::Done => 'd',
        JobState::Failed => 'f',
        JobState::Dead => 'x',
        JobState::Cancelled => 'c',
    }
}

/// The state of a one-letter code.
pub fn state_from_code(code: char) -> Option<JobState> {
    JobState::ALL
        .into_iter()
        .find(|state| state_code(*state) == code)
}

/// The prefix that URLs of a pass are stored relative to: the source up to its last `/` (the
/// listed prefix, or the manifest's folder).
pub fn url_base(source: &str) -> &str {
    source.rfind('/').map_or("", |index| &source[..=index])
}

/// A URL as stored: relative to `base` when it starts with it, else `=` and the whole URL.
/// Injective: a relative rest that itself starts with `=` is stored whole.
pub fn encode_url(base: &str, url: &str) -> String {
    match url.strip_prefix(base) {
        Some(rest) if !base.is_empty() && !rest.starts_with('=') => rest.to_owned(),
        _ => format!("={url}"),
    }
}

/// The inverse of [`encode_url`].
pub fn decode_url(base: &str, stored: &str) -> String {
    match stored.strip_prefix('=') {
        Some(url) => url.to_owned(),
        None => format!("{base}{stored}"),
    }
}

/// The `where` part of a record: `[url, start_s, end_s, probe]` as JSON. Scripts split a record
/// at its first `|`, which comes before this part, so its contents are never looked at there.
pub fn encode_where(base: &str, job: &NewJob) -> Result<String> {
    let tuple = (
        encode_url(base, &job.video_url),
        job.start_s,
        job.end_s,
        u8::from(job.probe),
    );
    serde_json::to_string(&tuple).map_err(|error| Error::Corrupt(error.to_string()))
}

/// The `v` field: `[size_bytes, etag]`, the etag packed by [`pack_text`].
pub fn encode_version(job: &NewJob) -> Result<String> {
    let tuple = (job.size_bytes, job.etag.as_deref().map(pack_text));
    serde_json::to_string(&tuple).map_err(|error| Error::Corrupt(error.to_string()))
}

/// Rebuilds a job's spec from its `where` part and, unless it was dropped, its `v` field.
pub fn decode_spec(base: &str, where_part: &str, version: Option<&str>) -> Result<NewJob> {
    let corrupt = |what: &str, error: serde_json::Error| Error::Corrupt(format!("{what}: {error}"));
    let (url, start_s, end_s, probe): (String, f64, f64, u8) =
        serde_json::from_str(where_part).map_err(|error| corrupt("job record", error))?;
    let (size_bytes, etag): (u64, Option<String>) = match version {
        Some(version) => {
            serde_json::from_str(version).map_err(|error| corrupt("job version", error))?
        }
        None => (0, None),
    };
    Ok(NewJob {
        video_url: decode_url(base, &url),
        start_s,
        end_s,
        size_bytes,
        etag: etag.as_deref().map(unpack_text).transpose()?,
        probe: probe != 0,
    })
}

/// A record split into its parts: state, attempt, crash count and `where` part.
pub fn split_record(record: &str) -> Result<(JobState, u32, u32, &str)> {
    let corrupt = || Error::Corrupt(format!("job record {record:?}"));
    let mut chars = record.chars();
    let state = chars.next().and_then(state_from_code).ok_or_else(corrupt)?;
    let after_state = chars.as_str();
    let digits = after_state
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after_state.len());
    let attempt = after_state[..digits].parse().map_err(|_| corrupt())?;
    let (crashes, where_part) = split_rest(&after_state[digits..])?;
    Ok((state, attempt, crashes, where_part))
}

/// What scripts hand back as a record's `rest` (`{counts}|{where}`): the crash count and the
/// `where` part. Panics are only read by the scripts.
pub fn split_rest(rest: &str) -> Result<(u32, &str)> {
    let corrupt = || Error::Corrupt(format!("job record rest {rest:?}"));
    let (counts, where_part) = rest.split_once('|').ok_or_else(corrupt)?;
    let mut crashes = 0;
    let mut remaining = counts;
    while let Some(tag) = remaining.chars().next() {
        let body = &remaining[tag.len_utf8()..];
        let digits = body
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(body.len());
        let value: u32 = body[..digits].parse().map_err(|_| corrupt())?;
        match tag {
            'c' => crashes = value,
            'k' => {}
            _ => return Err(corrupt()),
        }
        remaining = &body[digits..];
    }
    Ok((crashes, where_part))
}

/// Hex digests (ETags, content hashes, the video ids in evidence keys) are stored as base64 of
/// their bytes: 22 characters for 32 hex digits. `#` marks packed hex, `%` packed hex in quotes
/// (S3 ETags), `!` escapes a text that starts with one of these marks.
pub fn pack_text(text: &str) -> String {
    let (quoted, inner) = match text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) => (true, inner),
        None => (false, text),
    };
    let is_hex = inner.len() >= 16
        && inner.len() % 2 == 0
        && inner
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
    if is_hex {
        let bytes: Vec<u8> = (0..inner.len())
            .step_by(2)
            .filter_map(|index| u8::from_str_radix(&inner[index..index + 2], 16).ok())
            .collect();
        let mark = if quoted { '%' } else { '#' };
        return format!("{mark}{}", URL_SAFE_NO_PAD.encode(bytes));
    }
    if text.starts_with(['#', '%', '!']) {
        return format!("!{text}");
    }
    text.to_owned()
}

/// The inverse of [`pack_text`].
pub fn unpack_text(stored: &str) -> Result<String> {
    let unhex = |packed: &str| -> Result<String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(packed)
            .map_err(|_| Error::Corrupt(format!("packed text {stored:?}")))?;
        Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
    };
    if let Some(packed) = stored.strip_prefix('#') {
        return unhex(packed);
    }
    if let Some(packed) = stored.strip_prefix('%') {
        return Ok(format!("\"{}\"", unhex(packed)?));
    }
    Ok(stored.strip_prefix('!').unwrap_or(stored).to_owned())
}

/// A result URL as stored, against `template` (the pass's first result): `~{prefix}.{suffix}.`
/// and the packed middle when the two share a prefix and suffix, else `=` and the whole result.
pub fn encode_result(template: Option<&str>, result: &str) -> String {
    let whole = format!("={result}");
    let Some(template) = template else {
        return whole;
    };
    let mut prefix = template
        .bytes()
        .zip(result.bytes())
        .take_while(|(a, b)| a == b)
        .count();
    while !result.is_char_boundary(prefix) {
        prefix -= 1;
    }
    let most = result.len().min(template.len()) - prefix;
    let mut suffix = template
        .bytes()
        .rev()
        .zip(result.bytes().rev())
        .take(most)
        .take_while(|(a, b)| a == b)
        .count();
    while !result.is_char_boundary(result.len() - suffix) {
        suffix -= 1;
    }
    let middle = &result[prefix..result.len() - suffix];
    let packed = format!("~{prefix}.{suffix}.{}", pack_text(middle));
    if packed.len() < whole.len() {
        packed
    } else {
        whole
    }
}

/// The inverse of [`encode_result`].
pub fn decode_result(template: Option<&str>, stored: &str) -> Result<String> {
    if let Some(result) = stored.strip_prefix('=') {
        return Ok(result.to_owned());
    }
    let corrupt = || Error::Corrupt(format!("stored result {stored:?}"));
    let rest = stored.strip_prefix('~').ok_or_else(corrupt)?;
    let mut parts = rest.splitn(3, '.');
    let (Some(prefix), Some(suffix), Some(middle)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(corrupt());
    };
    let prefix: usize = prefix.parse().map_err(|_| corrupt())?;
    let suffix: usize = suffix.parse().map_err(|_| corrupt())?;
    let template = template.ok_or_else(corrupt)?;
    if prefix + suffix > template.len()
        || !template.is_char_boundary(prefix)
        || !template.is_char_boundary(template.len() - suffix)
    {
        return Err(corrupt());
    }
    Ok(format!(
        "{}{}{}",
        &template[..prefix],
        unpack_text(middle)?,
        &template[template.len() - suffix..]
    ))
}

/// Where a job's identity (URL, time range, probe) goes in the de-duplication index: its bucket
/// and its 8-byte field. 81 bits of SHA-256 in all: two different videos collide with
/// probability below 1e-10 even in a pass of 10 million.
pub fn dedup_slot(job: &NewJob) -> (u32, [u8; 8]) {
    let digest = crate::store::identity_digest(job);
    let head = u32::from_be_bytes([0, digest[0], digest[1], digest[2]]);
    let bucket = head >> (24 - DEDUP_BUCKET_BITS);
    let mut field = [0u8; 8];
    field.copy_from_slice(&digest[3..11]);
    (bucket, field)
}

/// Splits a job id `{pass_id}.{n}` into its pass and number.
pub fn parse_job_id(job_id: &str) -> Option<(&str, u64)> {
    let (pass_id, n) = job_id.rsplit_once('.')?;
    let n: u64 = n.parse().ok()?;
    (!pass_id.is_empty() && n > 0 && n.to_string().len() == job_id.len() - pass_id.len() - 1)
        .then_some((pass_id, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(url: &str, etag: Option<&str>) -> NewJob {
        NewJob {
            video_url: url.into(),
            start_s: 600.0,
            end_s: 1_337.533_333_333_333_3,
            size_bytes: 104_857_600,
            etag: etag.map(str::to_owned),
            probe: false,
        }
    }

    #[test]
    fn urls_round_trip_relative_or_whole() {
        let base = url_base("s3://bucket/videos/");
        assert_eq!(base, "s3://bucket/videos/");
        assert_eq!(url_base("file:///data/manifest.txt"), "file:///data/");
        for url in [
            "s3://bucket/videos/a.mp4",
            "s3://bucket/videos/=odd.mp4",
            "s3://other/b.mp4",
            "=strange",
            "",
        ] {
            let stored = encode_url(base, url);
            assert_eq!(decode_url(base, &stored), url, "{url} stored as {stored}");
        }
        assert_eq!(encode_url(base, "s3://bucket/videos/a.mp4"), "a.mp4");
        assert_eq!(decode_url("", &encode_url("", "x")), "x");
    }

    #[test]
    fn specs_round_trip_exactly() {
        for etag in [
            None,
            Some("\"9b2cf535f27731c974343645a3985328\""),
            Some("9b2cf535f27731c974343645a3985328"),
            Some("#not-hex"),
            Some("4e2a-17b3c4d5e6f-2f1a"),
        ] {
            let original = job("s3://bucket/videos/a.mp4", etag);
            let base = "s3://bucket/videos/";
            let where_part = encode_where(base, &original).unwrap();
            let version = encode_version(&original).unwrap();
            assert!(!where_part.contains('\n'));
            let decoded = decode_spec(base, &where_part, Some(&version)).unwrap();
            assert_eq!(decoded, original);
        }
        let s3 = encode_version(&job("x", Some("\"9b2cf535f27731c974343645a3985328\""))).unwrap();
        assert!(s3.len() <= 40, "{s3}");
    }

    #[test]
    fn results_pack_against_the_template() {
        let template = "index/videos/0f1e2d3c4b5a69788796a5b4c3d2e1f0/aa11/document.json";
        let result = "index/videos/9b2cf535f27731c974343645a3985328/aa11/document.json";
        let stored = encode_result(Some(template), result);
        assert!(stored.len() < 32, "{stored}");
        assert_eq!(decode_result(Some(template), &stored).unwrap(), result);
        for other in ["", "x", "index/videos/é/aa11/document.json", template] {
            let stored = encode_result(Some(template), other);
            assert_eq!(decode_result(Some(template), &stored).unwrap(), other);
        }
        assert_eq!(decode_result(None, &encode_result(None, "r")).unwrap(), "r");
        assert!(decode_result(None, "~1.1.x").is_err());
    }

    #[test]
    fn records_and_ids_parse() {
        assert_eq!(
            split_record("l3|[\"a\",0.0,0.0,1]").unwrap(),
            (JobState::Leased, 3, 0, "[\"a\",0.0,0.0,1]")
        );
        assert_eq!(
            split_record("p2c1k1|[\"a|b\",0.0,0.0,1]").unwrap(),
            (JobState::Pending, 2, 1, "[\"a|b\",0.0,0.0,1]")
        );
        assert_eq!(split_rest("k1c12|x").unwrap(), (12, "x"));
        assert!(split_record("q1|x").is_err());
        assert!(split_record("p1z3|x").is_err());
        assert!(split_record("p1c|x").is_err());
        assert!(split_record("p1").is_err());
        assert_eq!(parse_job_id("pass-abc.17"), Some(("pass-abc", 17)));
        for bad in ["pass-x.nope", "pass-x.0", "pass-x.017", ".5", "nodot"] {
            assert_eq!(parse_job_id(bad), None, "{bad}");
        }
        let (bucket, _) = dedup_slot(&job("a", None));
        assert!(bucket < DEDUP_BUCKETS);
    }
}
