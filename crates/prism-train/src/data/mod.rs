//! Training data: the example type every task kind reads, and readers for JSONL, CSV/TSV and
//! SQuAD v1.1 JSON. A malformed line is an error naming the file, line and field.

mod noise;
mod order;
pub mod registry;

pub use noise::{flip_labels, perturb_text};
pub use order::{next_batch, Cursor};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::Path;

pub use prism_model::tasks::{Answer, Example, Target, TargetKind};

/// Which fields hold what, for a task's data files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    #[serde(default = "d_text")]
    pub text: String,
    /// Second text of a pair (NLI hypothesis); `premise`/`hypothesis` are found by default.
    #[serde(default)]
    pub text_b: Option<String>,
    #[serde(default = "d_label")]
    pub label: String,
    #[serde(default = "d_tokens")]
    pub tokens: String,
    #[serde(default = "d_tags")]
    pub tags: String,
}

fn d_text() -> String {
    "text".into()
}
fn d_label() -> String {
    "label".into()
}
fn d_tokens() -> String {
    "tokens".into()
}
fn d_tags() -> String {
    "tags".into()
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            text: d_text(),
            text_b: None,
            label: d_label(),
            tokens: d_tokens(),
            tags: d_tags(),
        }
    }
}

/// Read a data file, choosing the format by extension: `.jsonl`, `.csv`, `.tsv`, or `.json`
/// (SQuAD v1.1).
pub fn read_file(
    path: &Path,
    fields: &Fields,
    kind: TargetKind,
    pair: bool,
) -> Result<Vec<Example>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let examples = match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(path, fields, kind, pair)?,
        "csv" => read_delimited(path, b',', fields, kind, pair)?,
        "tsv" | "txt" => read_delimited(path, b'\t', fields, kind, pair)?,
        "json" => read_squad(path)?,
        other => {
            return Err(Error::File {
                path: path.to_path_buf(),
                msg: format!(
                    "unknown data format `.{other}` (use .jsonl, .csv, .tsv, or SQuAD .json)"
                ),
            })
        }
    };
    if examples.is_empty() {
        return Err(Error::File {
            path: path.to_path_buf(),
            msg: "no examples".into(),
        });
    }
    Ok(examples)
}

/// Field-by-field access to one record, for JSON objects and CSV rows alike.
trait Record {
    fn get_str(&self, field: &str) -> Option<Result<String, String>>;
    fn get_value(&self, field: &str) -> Option<Result<f64, String>>;
    fn get_list(&self, field: &str) -> Option<Result<Vec<String>, String>>;
    /// A multi-label target: like [`Record::get_list`], numbers allowed as names.
    fn get_labels(&self, field: &str) -> Option<Result<Vec<String>, String>> {
        self.get_list(field)
    }
}

impl Record for serde_json::Map<String, serde_json::Value> {
    fn get_str(&self, field: &str) -> Option<Result<String, String>> {
        self.get(field).filter(|v| !v.is_null()).map(|v| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            // `true` is not the class "true": a boolean where a name belongs is a data error.
            serde_json::Value::Bool(b) => Err(format!("expected a string, found the boolean {b}")),
            other => Err(format!("expected a string, found {other}")),
        })
    }
    fn get_value(&self, field: &str) -> Option<Result<f64, String>> {
        self.get(field).filter(|v| !v.is_null()).map(|v| match v {
            serde_json::Value::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("{n} is not a finite number")),
            serde_json::Value::String(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("expected a number, found \"{s}\"")),
            other => Err(format!("expected a number, found {other}")),
        })
    }
    fn get_list(&self, field: &str) -> Option<Result<Vec<String>, String>> {
        self.get(field).filter(|v| !v.is_null()).map(|v| match v {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("expected a list of strings, found {x}"))
                })
                .collect(),
            other => Err(format!("expected a list of strings, found {other}")),
        })
    }
    fn get_labels(&self, field: &str) -> Option<Result<Vec<String>, String>> {
        self.get(field).filter(|v| !v.is_null()).map(|v| match v {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Number(n) => Ok(n.to_string()),
                    other => Err(format!(
                        "expected a list of label names, found {other} in the list"
                    )),
                })
                .collect(),
            other => Err(format!(
                "expected a list of label names (multi-label), found {other}"
            )),
        })
    }
}

struct CsvRow<'a> {
    headers: &'a csv::StringRecord,
    row: &'a csv::StringRecord,
}

impl Record for CsvRow<'_> {
    fn get_str(&self, field: &str) -> Option<Result<String, String>> {
        let i = self.headers.iter().position(|h| h == field)?;
        self.row.get(i).map(|s| Ok(s.to_string()))
    }
    fn get_value(&self, field: &str) -> Option<Result<f64, String>> {
        self.get_str(field).map(|s| {
            let s = s?;
            s.trim()
                .parse::<f64>()
                .map_err(|_| format!("expected a number, found \"{s}\""))
        })
    }
    fn get_list(&self, field: &str) -> Option<Result<Vec<String>, String>> {
        self.get_str(field)
            .map(|s| Ok(s?.split_whitespace().map(str::to_string).collect()))
    }
}

/// Default names of the second text of a pair, tried in order.
const PAIR_FIELDS: [&str; 4] = ["text_b", "hypothesis", "text2", "sentence2"];
const FIRST_FIELDS: [&str; 3] = ["premise", "sentence1", "question"];

fn example_from(
    rec: &dyn Record,
    path: &Path,
    line: usize,
    fields: &Fields,
    kind: TargetKind,
    pair: bool,
) -> Result<Example> {
    let err = |field: &str, msg: String| Error::data(path, line, field, msg);
    let str_field = |name: &str| -> Result<Option<String>> {
        rec.get_str(name).transpose().map_err(|m| err(name, m))
    };
    let mut ex = Example {
        line,
        id: str_field("id")?,
        text: String::new(),
        text_b: None,
        tokens: Vec::new(),
        target: Target::None,
    };
    if kind == TargetKind::Tags {
        ex.tokens = match rec.get_list(&fields.tokens) {
            Some(r) => r.map_err(|m| err(&fields.tokens, m))?,
            None => return Err(err(&fields.tokens, "missing".into())),
        };
        ex.text = ex.tokens.join(" ");
        if let Some(tags) = rec.get_list(&fields.tags) {
            let tags = tags.map_err(|m| err(&fields.tags, m))?;
            if tags.len() != ex.tokens.len() {
                return Err(err(
                    &fields.tags,
                    format!("{} tags for {} tokens", tags.len(), ex.tokens.len()),
                ));
            }
            ex.target = Target::Tags(tags);
        }
        return Ok(ex);
    }
    // The first text: the configured field, or a pair's conventional first field.
    let mut text = str_field(&fields.text)?;
    if text.is_none() && pair {
        for f in FIRST_FIELDS {
            if let Some(t) = str_field(f)? {
                text = Some(t);
                break;
            }
        }
    }
    ex.text = text.ok_or_else(|| err(&fields.text, "missing".into()))?;
    if pair {
        let b = match &fields.text_b {
            Some(f) => str_field(f)?.ok_or_else(|| err(f, "missing".into()))?,
            None => {
                let mut found = None;
                for f in PAIR_FIELDS {
                    if let Some(t) = str_field(f)? {
                        found = Some(t);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    err(
                        PAIR_FIELDS[0],
                        format!(
                            "missing (pair tasks need one of {PAIR_FIELDS:?} or `fields.text_b`)"
                        ),
                    )
                })?
            }
        };
        ex.text_b = Some(b);
    }
    ex.target = match kind {
        TargetKind::Label => match str_field(&fields.label)? {
            // A label with surrounding spaces or none at all would silently become a class of
            // its own.
            Some(l) if l.trim().is_empty() => {
                return Err(err(&fields.label, "is empty".into()));
            }
            Some(l) if l.trim() != l => {
                return Err(err(
                    &fields.label,
                    format!(
                        "{l:?} has surrounding spaces (did you mean {:?}?)",
                        l.trim()
                    ),
                ));
            }
            Some(l) => Target::Label(l),
            None => Target::None,
        },
        TargetKind::Value => match rec.get_value(&fields.label) {
            Some(v) => {
                let v = v.map_err(|m| err(&fields.label, m))?;
                // Finite as the f32 the model trains on, not only as f64 (1e300 is not).
                if !v.is_finite() || !(v as f32).is_finite() {
                    return Err(err(
                        &fields.label,
                        format!("{v} is not a finite 32-bit number"),
                    ));
                }
                Target::Value(v)
            }
            None => Target::None,
        },
        // A list of label names (JSON strings or numbers; whitespace-separated in CSV/TSV);
        // an empty list is an example no label applies to.
        TargetKind::LabelSet => match rec.get_labels(&fields.label) {
            Some(l) => Target::Labels(l.map_err(|m| err(&fields.label, m))?),
            None => Target::None,
        },
        TargetKind::Answers | TargetKind::Tags => Target::None,
    };
    Ok(ex)
}

/// One JSON object per line; blank lines are skipped.
pub fn read_jsonl(
    path: &Path,
    fields: &Fields,
    kind: TargetKind,
    pair: bool,
) -> Result<Vec<Example>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => {
                Error::data(path, line_no, "(line)", "is not valid UTF-8".to_string())
            }
            _ => Error::io(path, e),
        })?;
        // A byte-order mark (editors on Windows write one) is not part of the first record.
        let line = if line_no == 1 {
            line.strip_prefix('\u{feff}').unwrap_or(&line).to_string()
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, line_no, "(line)", format!("not a JSON object: {e}")))?;
        out.push(example_from(&obj, path, line_no, fields, kind, pair)?);
    }
    Ok(out)
}

/// CSV or TSV with a header row naming the columns.
pub fn read_delimited(
    path: &Path,
    delim: u8,
    fields: &Fields,
    kind: TargetKind,
    pair: bool,
) -> Result<Vec<Example>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if delim == b',' {
        check_quotes(&bytes, delim).map_err(|(line, msg)| Error::data(path, line, "(row)", msg))?;
    }
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .flexible(false)
        .quoting(delim == b',')
        .from_reader(&bytes[..]);
    let headers = rdr
        .headers()
        .map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?
        .clone();
    let mut out = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        // The line the record starts on, as the csv crate counts it (a quoted field may span
        // lines, so the record index is not the line).
        let row = row.map_err(|e| {
            let line = e.position().map(|p| p.line() as usize).unwrap_or(i + 2);
            Error::data(path, line, "(row)", e.to_string())
        })?;
        let line_no = row.position().map(|p| p.line() as usize).unwrap_or(i + 2);
        let rec = CsvRow {
            headers: &headers,
            row: &row,
        };
        out.push(
            example_from(&rec, path, line_no, fields, kind, pair).map_err(|e| match e {
                Error::Data {
                    path,
                    line,
                    field,
                    msg,
                } if msg == "missing" => Error::Data {
                    path,
                    line,
                    field: field.clone(),
                    msg: format!(
                        "no column `{field}` (columns: {})",
                        headers.iter().collect::<Vec<_>>().join(", ")
                    ),
                },
                other => other,
            })?,
        );
    }
    Ok(out)
}

/// Quoted fields as RFC 4180 (and Python's `csv` with `strict=True`) writes them: a field
/// that opens with `"` ends with a `"` followed by the delimiter, a line end or the end of the
/// file (`""` inside is a quote). The csv crate reads anything else leniently, so an
/// unterminated quote silently swallows the rows after it, up to the next stray quote or the
/// end of the file. Returns the line and what is wrong.
fn check_quotes(bytes: &[u8], delim: u8) -> std::result::Result<(), (usize, String)> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut line = 1usize;
    let mut at_field_start = true;
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if at_field_start && c == b'"' {
            let opened = line;
            i += 1;
            loop {
                match body.get(i) {
                    None => {
                        return Err((
                            opened,
                            format!(
                                "the quoted field opened on line {opened} is never closed (an \
                                 unterminated quote would swallow every row after it)"
                            ),
                        ))
                    }
                    Some(b'"') if body.get(i + 1) == Some(&b'"') => i += 2,
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\n') => {
                        line += 1;
                        i += 1;
                    }
                    Some(_) => i += 1,
                }
            }
            match body.get(i) {
                None | Some(b'\n') | Some(b'\r') => {}
                Some(&d) if d == delim => {}
                Some(&other) => {
                    let shown = String::from_utf8_lossy(&body[i..(i + 4).min(body.len())])
                        .chars()
                        .next()
                        .unwrap_or(other as char);
                    return Err((
                        line,
                        if opened == line {
                            format!(
                                "a quoted field ends with {shown:?} after its closing quote \
                                 (write a quote inside a quoted field as \"\")"
                            )
                        } else {
                            format!(
                                "the quoted field opened on line {opened} closes here and is \
                                 followed by {shown:?}: an unterminated quote on line {opened} \
                                 has merged the rows up to this one"
                            )
                        },
                    ));
                }
            }
            at_field_start = false;
            continue;
        }
        at_field_start = c == delim || c == b'\n';
        if c == b'\n' {
            line += 1;
        }
        i += 1;
    }
    Ok(())
}

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
pub(crate) struct SquadArticle {
    pub paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
pub(crate) struct SquadParagraph {
    pub context: String,
    pub qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
pub(crate) struct SquadQa {
    pub id: String,
    pub question: String,
    #[serde(default)]
    pub answers: Vec<SquadAnswer>,
}
#[derive(Deserialize)]
pub(crate) struct SquadAnswer {
    pub text: String,
    pub answer_start: usize,
}

/// SQuAD v1.1 JSON: one example per question; every answer's offset is checked.
pub fn read_squad(path: &Path) -> Result<Vec<Example>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let file: SquadFile = serde_json::from_str(&text)
        .map_err(|e| Error::data(path, e.line(), "(json)", e.to_string()))?;
    let mut out = Vec::new();
    for art in file.data {
        for para in art.paragraphs {
            let chars: Vec<char> = para.context.chars().collect();
            for qa in para.qas {
                let n = out.len() + 1;
                let mut answers = Vec::new();
                for a in qa.answers {
                    let start = locate_answer(&chars, &a.text, a.answer_start).ok_or_else(|| {
                        Error::data(path, n, "answers", format!(
                            "question {}: answer \"{}\" does not occur in its context (given at character {})", qa.id, a.text, a.answer_start
                        ))
                    })?;
                    answers.push(Answer {
                        text: a.text.trim().to_string(),
                        start,
                    });
                }
                out.push(Example {
                    line: n,
                    id: Some(qa.id),
                    text: qa.question,
                    text_b: Some(para.context.clone()),
                    tokens: Vec::new(),
                    target: Target::Answers(answers),
                });
            }
        }
    }
    Ok(out)
}

/// Character offset of `text` in `context`: `given` when it is there; otherwise (a few SQuAD
/// answers carry stray whitespace or an offset that is off by a little) the occurrence of the
/// trimmed text nearest to `given`.
fn locate_answer(context: &[char], text: &str, given: usize) -> Option<usize> {
    let want: Vec<char> = text.trim().chars().collect();
    if want.is_empty() || want.len() > context.len() {
        return None;
    }
    let at = |i: usize| {
        context
            .get(i..i + want.len())
            .is_some_and(|w| w == want.as_slice())
    };
    let lead = text.chars().take_while(|c| c.is_whitespace()).count();
    if at(given + lead) {
        return Some(given + lead);
    }
    (0..=context.len() - want.len())
        .filter(|&i| at(i))
        .min_by_key(|&i| i.abs_diff(given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(ext: &str, body: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    /// A CSV record after a multi-line quoted field is named by the line it starts on, the
    /// line the csv crate's own message counts.
    #[test]
    fn csv_errors_name_the_line_the_record_starts_on() {
        let f = file(
            ".csv",
            "text,label\n\"two\nlines\",pos\n\"three\nmore\nlines\",neg\nshort\n",
        );
        let e = read_file(f.path(), &Fields::default(), TargetKind::Label, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:7:", f.path().display())), "{e}");
        let f = file(".csv", "text,label\n\"two\nlines\",pos\nnext,neg\n");
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Label, false).unwrap();
        assert_eq!((ex[0].line, ex[1].line), (2, 4));
        // Issue 22: an unterminated quote merged two rows without a word.
        for (body, line, says) in [
            (
                "text,label\n\"great movie,pos\nit was \"bad\" really,neg\nfine,pos\n",
                3,
                "opened on line 2",
            ),
            (
                "text,label\nok,pos\n\"never closed,neg\nfine,pos\n",
                3,
                "never closed",
            ),
            ("text,label\n\"a\"b,pos\n", 2, "after its closing quote"),
        ] {
            let f = file(".csv", body);
            let e = read_file(f.path(), &Fields::default(), TargetKind::Label, false)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{}:{line}:", f.path().display())) && e.contains(says),
                "{body:?} -> {e}"
            );
        }
        // Well-formed quoting is read as before: escaped quotes, empty quoted fields, CRLF,
        // a quote inside an unquoted field, a BOM.
        let f = file(
            ".csv",
            "\u{feff}text,label\r\n\"say \"\"hi\"\"\",pos\r\n\"\",neg\r\n5\" screen,pos\r\n",
        );
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Label, false).unwrap();
        let texts: Vec<&str> = ex.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["say \"hi\"", "", "5\" screen"]);
    }

    /// Values that used to be read wrongly are errors naming the file, line and field; a BOM
    /// is skipped.
    #[test]
    fn labels_that_would_become_classes_of_their_own_are_refused() {
        let d = Fields::default();
        for (body, kind, field, says) in [
            (
                "{\"text\": \"a\", \"label\": true}\n",
                TargetKind::Label,
                "label",
                "boolean true",
            ),
            (
                "{\"text\": \"a\", \"label\": \"negative \"}\n",
                TargetKind::Label,
                "label",
                "surrounding spaces",
            ),
            (
                "{\"text\": \"a\", \"label\": \"\"}\n",
                TargetKind::Label,
                "label",
                "empty",
            ),
            (
                "{\"text\": \"a\", \"label\": 1e300}\n",
                TargetKind::Value,
                "label",
                "32-bit",
            ),
        ] {
            let f = file(".jsonl", body);
            let e = read_file(f.path(), &d, kind, false)
                .unwrap_err()
                .to_string();
            let at = format!("{}:1: field `{field}`", f.path().display());
            assert!(e.contains(says) && e.contains(&at), "{body} -> {e}");
        }
        // A UTF-8 byte-order mark before the first record is not part of it.
        let f = file(".jsonl", "\u{feff}{\"text\": \"a\", \"label\": \"pos\"}\n");
        let ex = read_file(f.path(), &d, TargetKind::Label, false).unwrap();
        assert_eq!(ex[0].target, Target::Label("pos".into()));
        // Invalid UTF-8 is named with its line.
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        f.write_all(b"{\"text\": \"a\", \"label\": \"pos\"}\n{\"text\": \"\xff\"}\n")
            .unwrap();
        let e = read_file(f.path(), &d, TargetKind::Label, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}:2:", f.path().display())) && e.contains("UTF-8"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_reads_texts_pairs_values_and_tags() {
        let f = file(
            ".jsonl",
            "{\"text\": \"good\", \"label\": \"pos\"}\n\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
        );
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Label, false).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[1].line, 3);
        assert_eq!(ex[1].target, Target::Label("neg".into()));
        let f = file(
            ".jsonl",
            "{\"premise\": \"a\", \"hypothesis\": \"b\", \"label\": \"entailment\"}\n",
        );
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Label, true).unwrap();
        assert_eq!(
            (ex[0].text.as_str(), ex[0].text_b.as_deref()),
            ("a", Some("b"))
        );
        let f = file(".jsonl", "{\"text\": \"x\", \"label\": -2.5}\n");
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Value, false).unwrap();
        assert_eq!(ex[0].target, Target::Value(-2.5));
        let f = file(
            ".jsonl",
            "{\"tokens\": [\"Ada\", \"Lovelace\"], \"tags\": [\"B-PER\", \"I-PER\"]}\n",
        );
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Tags, false).unwrap();
        assert_eq!(
            ex[0].target,
            Target::Tags(vec!["B-PER".into(), "I-PER".into()])
        );
    }

    #[test]
    fn malformed_jsonl_names_file_line_and_field() {
        let f = file(
            ".jsonl",
            "{\"text\": \"ok\", \"label\": \"pos\"}\n{\"text\": \"broken\", \"label\": \n",
        );
        let e = read_file(f.path(), &Fields::default(), TargetKind::Label, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}:2:", f.path().display())) && e.contains("not a JSON object"),
            "{e}"
        );
        let f = file(".jsonl", "{\"txt\": \"typo\", \"label\": \"pos\"}\n");
        let e = read_file(f.path(), &Fields::default(), TargetKind::Label, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":1: field `text`: missing"), "{e}");
        let f = file(".jsonl", "{\"text\": \"x\", \"label\": \"high\"}\n");
        let e = read_file(f.path(), &Fields::default(), TargetKind::Value, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `label`") && e.contains("expected a number"),
            "{e}"
        );
        let f = file(
            ".jsonl",
            "{\"tokens\": [\"a\", \"b\"], \"tags\": [\"O\"]}\n",
        );
        let e = read_file(f.path(), &Fields::default(), TargetKind::Tags, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 tags for 2 tokens"), "{e}");
    }

    #[test]
    fn label_flips_and_perturbations_are_seeded() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let make = || {
            (0..1000)
                .map(|i| Example {
                    line: i,
                    id: None,
                    text: String::new(),
                    text_b: None,
                    tokens: vec![],
                    target: Target::Label("pos".into()),
                })
                .collect::<Vec<_>>()
        };
        let (mut a, mut b) = (make(), make());
        let n = flip_labels(&mut a, &labels, 0.2, 3);
        assert_eq!(n, flip_labels(&mut b, &labels, 0.2, 3));
        assert_eq!(a, b);
        assert!((150..250).contains(&n), "{n}");
        assert!(
            a.iter()
                .filter(|e| e.target == Target::Label("neg".into()))
                .count()
                == n
        );
        use rand::SeedableRng;
        let t = "the quick brown fox jumps over the lazy dog again and again";
        let p1 = perturb_text(t, 0.5, 0.1, &mut rand::rngs::StdRng::seed_from_u64(1));
        let p2 = perturb_text(t, 0.5, 0.1, &mut rand::rngs::StdRng::seed_from_u64(1));
        assert_eq!(p1, p2);
        assert_ne!(p1, t);
    }

    #[test]
    fn csv_and_tsv_use_named_columns() {
        let f = file(".csv", "sentence,score\n\"Hello, world\",1\nBye,0\n");
        let fields = Fields {
            text: "sentence".into(),
            label: "score".into(),
            ..Default::default()
        };
        let ex = read_file(f.path(), &fields, TargetKind::Label, false).unwrap();
        assert_eq!(ex[0].text, "Hello, world");
        assert_eq!(ex[1].line, 3);
        let f = file(".tsv", "review\tstars\ngreat\t5\n");
        let e = read_file(f.path(), &Fields::default(), TargetKind::Label, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":2: field `text`: no column `text` (columns: review, stars)"),
            "{e}"
        );
    }

    #[test]
    fn squad_answers_are_checked_against_the_context() {
        let good = r#"{"data":[{"title":"t","paragraphs":[{"context":"Denver won the game.","qas":[{"id":"q1","question":"Who won?","answers":[{"text":"Denver","answer_start":0}]}]}]}]}"#;
        let f = file(".json", good);
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Answers, true).unwrap();
        assert_eq!(
            ex[0].target,
            Target::Answers(vec![Answer {
                text: "Denver".into(),
                start: 0
            }])
        );
        // An offset that is a little off is repaired to the nearest occurrence...
        let f = file(
            ".json",
            &good.replace("\"answer_start\":0", "\"answer_start\":3"),
        );
        let ex = read_file(f.path(), &Fields::default(), TargetKind::Answers, true).unwrap();
        assert_eq!(
            ex[0].target,
            Target::Answers(vec![Answer {
                text: "Denver".into(),
                start: 0
            }])
        );
        // ...but an answer that is not in the context at all is an error.
        let f = file(
            ".json",
            &good.replace("\"text\":\"Denver\"", "\"text\":\"Boston\""),
        );
        let e = read_file(f.path(), &Fields::default(), TargetKind::Answers, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `answers`") && e.contains("q1") && e.contains("Boston"),
            "{e}"
        );
    }
}
