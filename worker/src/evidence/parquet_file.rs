//! Parquet files of the corpus tables: the rows of [`super::table`] written column by column
//! (flat schema, dictionary encoding, no compression, bounded row groups), readable by DuckDB,
//! Spark and pandas, and read back with the record reader ([`rows_from_parquet`]). The row types
//! live in `table.rs`; only the encoding is here.

use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use super::table::{AnswerRow, ClaimRow};
use super::{Error, Result};

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 65_536;

/// Values of one flat column.
enum Values {
    Text(Vec<Option<String>>),
    Double(Vec<Option<f64>>),
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
}

/// A flat column: name, nullability and values.
struct Column {
    name: &'static str,
    required: bool,
    values: Values,
}

/// Collects columns from rows, then writes them as one Parquet file.
struct ParquetTable<'a, R> {
    rows: &'a [R],
    columns: Vec<Column>,
}

impl<'a, R> ParquetTable<'a, R> {
    fn new(rows: &'a [R]) -> Self {
        Self {
            rows,
            columns: Vec::new(),
        }
    }

    fn text(mut self, name: &'static str, get: impl Fn(&R) -> &str) -> Self {
        let values = self
            .rows
            .iter()
            .map(|row| Some(get(row).to_owned()))
            .collect();
        self.columns.push(Column {
            name,
            required: true,
            values: Values::Text(values),
        });
        self
    }

    fn optional_text(mut self, name: &'static str, get: impl Fn(&R) -> Option<&String>) -> Self {
        let values = self.rows.iter().map(|row| get(row).cloned()).collect();
        self.columns.push(Column {
            name,
            required: false,
            values: Values::Text(values),
        });
        self
    }

    fn double(mut self, name: &'static str, get: impl Fn(&R) -> f64) -> Self {
        let values = self.rows.iter().map(|row| Some(get(row))).collect();
        self.columns.push(Column {
            name,
            required: true,
            values: Values::Double(values),
        });
        self
    }

    fn optional_double(mut self, name: &'static str, get: impl Fn(&R) -> Option<f64>) -> Self {
        let values = self.rows.iter().map(get).collect();
        self.columns.push(Column {
            name,
            required: false,
            values: Values::Double(values),
        });
        self
    }

    fn int(mut self, name: &'static str, get: impl Fn(&R) -> i64) -> Self {
        let values = self.rows.iter().map(|row| Some(get(row))).collect();
        self.columns.push(Column {
            name,
            required: true,
            values: Values::Int(values),
        });
        self
    }

    fn optional_int(mut self, name: &'static str, get: impl Fn(&R) -> Option<i64>) -> Self {
        let values = self.rows.iter().map(get).collect();
        self.columns.push(Column {
            name,
            required: false,
            values: Values::Int(values),
        });
        self
    }

    fn optional_bool(mut self, name: &'static str, get: impl Fn(&R) -> Option<bool>) -> Self {
        let values = self.rows.iter().map(get).collect();
        self.columns.push(Column {
            name,
            required: false,
            values: Values::Bool(values),
        });
        self
    }

    fn message_type(&self, table: &str) -> String {
        let mut message = format!("message {table} {{\n");
        for column in &self.columns {
            let repetition = if column.required {
                "REQUIRED"
            } else {
                "OPTIONAL"
            };
            let physical = match column.values {
                Values::Text(_) => "BYTE_ARRAY",
                Values::Double(_) => "DOUBLE",
                Values::Int(_) => "INT64",
                Values::Bool(_) => "BOOLEAN",
            };
            let annotation = if matches!(column.values, Values::Text(_)) {
                " (UTF8)"
            } else {
                ""
            };
            message.push_str(&format!(
                "  {repetition} {physical} {}{annotation};\n",
                column.name
            ));
        }
        message.push('}');
        message
    }

    fn write(self, table: &str) -> Result<Vec<u8>> {
        let schema = Arc::new(parse_message_type(&self.message_type(table))?);
        let properties = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::UNCOMPRESSED)
                .set_created_by("vidx".to_owned())
                .build(),
        );
        let mut writer = SerializedFileWriter::new(Vec::new(), schema, properties)?;
        for start in (0..self.rows.len()).step_by(ROW_GROUP_ROWS) {
            let end = (start + ROW_GROUP_ROWS).min(self.rows.len());
            let mut group = writer.next_row_group()?;
            for column in &self.columns {
                let Some(mut column_writer) = group.next_column()? else {
                    return Err(Error::Corrupt {
                        key: table.to_owned(),
                        reason: "schema has fewer columns".into(),
                    });
                };
                write_column(&mut column_writer, column, start, end)?;
                column_writer.close()?;
            }
            group.close()?;
        }
        Ok(writer.into_inner()?)
    }
}

/// Non-null values and the definition level of every value.
fn split_nulls<T: Clone>(values: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    let present = values.iter().flatten().cloned().collect();
    let levels = values
        .iter()
        .map(|value| i16::from(value.is_some()))
        .collect();
    (present, levels)
}

fn write_column(
    column_writer: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    column: &Column,
    start: usize,
    end: usize,
) -> Result<()> {
    let levels_if_optional = |levels: &[i16]| (!column.required).then(|| levels.to_vec());
    match &column.values {
        Values::Text(values) => {
            let (present, levels) = split_nulls(&values[start..end]);
            let present: Vec<ByteArray> = present
                .into_iter()
                .map(|text| ByteArray::from(text.into_bytes()))
                .collect();
            let levels = levels_if_optional(&levels);
            column_writer.typed::<ByteArrayType>().write_batch(
                &present,
                levels.as_deref(),
                None,
            )?;
        }
        Values::Double(values) => {
            let (present, levels) = split_nulls(&values[start..end]);
            let levels = levels_if_optional(&levels);
            column_writer
                .typed::<DoubleType>()
                .write_batch(&present, levels.as_deref(), None)?;
        }
        Values::Int(values) => {
            let (present, levels) = split_nulls(&values[start..end]);
            let levels = levels_if_optional(&levels);
            column_writer
                .typed::<Int64Type>()
                .write_batch(&present, levels.as_deref(), None)?;
        }
        Values::Bool(values) => {
            let (present, levels) = split_nulls(&values[start..end]);
            let levels = levels_if_optional(&levels);
            column_writer
                .typed::<BoolType>()
                .write_batch(&present, levels.as_deref(), None)?;
        }
    }
    Ok(())
}

/// Encodes claim rows as a Parquet file with the columns listed in `SCHEMA.md`.
pub fn claims_to_parquet(rows: &[ClaimRow]) -> Result<Vec<u8>> {
    ParquetTable::new(rows)
        .text("video_id", |row| &row.video_id)
        .text("video_url", |row| &row.video_url)
        .text("document_key", |row| &row.document_key)
        .text("model_id", |row| &row.model_id)
        .text("model_revision", |row| &row.model_revision)
        .text("task_hash", |row| &row.task_hash)
        .int("segment_index", |row| row.segment_index)
        .text("question_id", |row| &row.question_id)
        .text("question_kind", |row| &row.question_kind)
        .text("question", |row| &row.question)
        .optional_text("answer", |row| row.answer.as_ref())
        .int("claim_index", |row| row.claim_index)
        .text("object", |row| &row.object)
        .text("section", |row| &row.section)
        .optional_double("time_s", |row| row.time_s)
        .optional_double("relative_time_s", |row| row.relative_time_s)
        .optional_int("frame_index", |row| row.frame_index)
        .optional_double("frame_time_s", |row| row.frame_time_s)
        .optional_text("frame_key", |row| row.frame_key.as_ref())
        .optional_double("box_x1", |row| row.box_x1)
        .optional_double("box_y1", |row| row.box_y1)
        .optional_double("box_x2", |row| row.box_x2)
        .optional_double("box_y2", |row| row.box_y2)
        .int("box_count", |row| row.box_count)
        .text("boxes", |row| &row.boxes)
        .optional_double("confidence", |row| row.confidence.map(f64::from))
        .optional_text("category", |row| row.category.as_ref())
        .optional_bool("flagged", |row| row.flagged)
        .optional_text("severity", |row| row.severity.as_ref())
        .optional_text("pass_id", |row| row.pass_id.as_ref())
        .optional_int("written_at_ms", |row| row.written_at_ms)
        .write("claims")
}

/// Encodes answer rows as a Parquet file with the columns listed in `SCHEMA.md`.
pub fn answers_to_parquet(rows: &[AnswerRow]) -> Result<Vec<u8>> {
    ParquetTable::new(rows)
        .text("video_id", |row| &row.video_id)
        .text("video_url", |row| &row.video_url)
        .text("document_key", |row| &row.document_key)
        .text("model_id", |row| &row.model_id)
        .text("model_revision", |row| &row.model_revision)
        .text("task_hash", |row| &row.task_hash)
        .int("segment_index", |row| row.segment_index)
        .double("segment_start_s", |row| row.segment_start_s)
        .double("segment_end_s", |row| row.segment_end_s)
        .text("question_id", |row| &row.question_id)
        .text("question_kind", |row| &row.question_kind)
        .text("question", |row| &row.question)
        .optional_text("answer", |row| row.answer.as_ref())
        .optional_text("think", |row| row.think.as_ref())
        .int("claim_count", |row| row.claim_count)
        .int("dropped_count", |row| row.dropped_count)
        .optional_text("category", |row| row.category.as_ref())
        .optional_bool("flagged", |row| row.flagged)
        .optional_text("severity", |row| row.severity.as_ref())
        .optional_text("pass_id", |row| row.pass_id.as_ref())
        .optional_int("written_at_ms", |row| row.written_at_ms)
        .write("answers")
}

/// Decodes a Parquet file written by [`claims_to_parquet`] or [`answers_to_parquet`] (or by
/// DuckDB with the same column names) into rows, matching columns to fields by name; a column
/// the row type does not know is ignored, a missing optional one reads as absent.
pub fn rows_from_parquet<R: serde::de::DeserializeOwned>(
    bytes: bytes::Bytes,
    name: &str,
) -> Result<Vec<R>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let corrupt = |reason: String| Error::Corrupt {
        key: name.to_owned(),
        reason,
    };
    let reader = SerializedFileReader::new(bytes)?;
    let mut rows = Vec::new();
    for (number, row) in reader.get_row_iter(None)?.enumerate() {
        let row = row?;
        let mut object = serde_json::Map::new();
        for (column, field) in row.get_column_iter() {
            let value = match field {
                Field::Null => serde_json::Value::Null,
                Field::Bool(value) => serde_json::Value::Bool(*value),
                Field::Int(value) => serde_json::Value::from(*value),
                Field::Long(value) => serde_json::Value::from(*value),
                Field::Float(value) => serde_json::Value::from(f64::from(*value)),
                Field::Double(value) => serde_json::Value::from(*value),
                Field::Str(value) => serde_json::Value::String(value.clone()),
                other => {
                    return Err(corrupt(format!(
                        "row {number}: column {column} holds an unsupported value {other}"
                    )));
                }
            };
            object.insert(column.clone(), value);
        }
        let row = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|error| corrupt(format!("row {number}: {error}")))?;
        rows.push(row);
    }
    Ok(rows)
}
