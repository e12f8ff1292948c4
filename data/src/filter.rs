//! Row filters as data: a predicate is built in the driver
//! (`col("score").gt(0.5).and(col("lang").eq("en"))`), travels to the
//! workers with the stage's steps, and is evaluated with Arrow's compute
//! kernels. A closure cannot cross a process boundary; an expression can,
//! and its columns can be checked against the input before anything runs.
//! A filter that needs code goes in a `map_batches` function, which may
//! return fewer rows than it got.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, Scalar, StringArray,
};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A constant a column is compared with; cast to the column's type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// How a column is compared with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// `==`
    Eq,
    /// `!=`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
}

/// Which rows a filter keeps. A row where the predicate is null (a null
/// compared with anything) is dropped, as in SQL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Predicate {
    /// `column <op> value`.
    Compare {
        /// The column.
        column: String,
        /// The comparison.
        op: Comparison,
        /// The constant.
        value: Value,
    },
    /// The column is null.
    IsNull(String),
    /// The column is not null.
    IsNotNull(String),
    /// Both hold.
    And(Box<Predicate>, Box<Predicate>),
    /// Either holds.
    Or(Box<Predicate>, Box<Predicate>),
    /// The predicate does not hold.
    Not(Box<Predicate>),
}

/// A column, to build a predicate on: `col("score").gt(0.5)`.
pub fn col(name: &str) -> Column {
    Column(name.to_string())
}

/// A column named in a predicate being built.
#[derive(Clone, Debug)]
pub struct Column(String);

impl Column {
    fn compare(self, op: Comparison, value: impl Into<Value>) -> Predicate {
        Predicate::Compare {
            column: self.0,
            op,
            value: value.into(),
        }
    }
    /// `column == value`
    pub fn eq(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::Eq, value)
    }
    /// `column != value`
    pub fn not_eq(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::NotEq, value)
    }
    /// `column < value`
    pub fn lt(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::Lt, value)
    }
    /// `column <= value`
    pub fn lt_eq(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::LtEq, value)
    }
    /// `column > value`
    pub fn gt(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::Gt, value)
    }
    /// `column >= value`
    pub fn gt_eq(self, value: impl Into<Value>) -> Predicate {
        self.compare(Comparison::GtEq, value)
    }
    /// The column is null.
    pub fn is_null(self) -> Predicate {
        Predicate::IsNull(self.0)
    }
    /// The column is not null.
    pub fn is_not_null(self) -> Predicate {
        Predicate::IsNotNull(self.0)
    }
}

impl Predicate {
    /// Both this and `other` hold.
    pub fn and(self, other: Predicate) -> Predicate {
        Predicate::And(Box::new(self), Box::new(other))
    }
    /// This or `other` holds.
    pub fn or(self, other: Predicate) -> Predicate {
        Predicate::Or(Box::new(self), Box::new(other))
    }
    /// This does not hold.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Predicate {
        Predicate::Not(Box::new(self))
    }

    /// The columns it reads, each once, in order of appearance.
    pub fn columns(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.collect_columns(&mut names);
        names
    }

    fn collect_columns(&self, names: &mut Vec<String>) {
        match self {
            Predicate::Compare { column, .. }
            | Predicate::IsNull(column)
            | Predicate::IsNotNull(column) => {
                if !names.contains(column) {
                    names.push(column.clone());
                }
            }
            Predicate::And(a, b) | Predicate::Or(a, b) => {
                a.collect_columns(names);
                b.collect_columns(names);
            }
            Predicate::Not(a) => a.collect_columns(names),
        }
    }

    /// The rows of `batch` it keeps.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let mask = self.evaluate(batch)?;
        arrow::compute::filter_record_batch(batch, &mask).map_err(|e| format!("filter: {e}"))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray, String> {
        let arrow_err = |e: arrow::error::ArrowError| format!("filter: {e}");
        match self {
            Predicate::Compare { column, op, value } => {
                let array = column_of(batch, column)?;
                let (array, constant) = comparable_pair(array, value, column)?;
                let scalar = Scalar::new(constant);
                let array = array.as_ref();
                match op {
                    Comparison::Eq => cmp::eq(&array, &scalar),
                    Comparison::NotEq => cmp::neq(&array, &scalar),
                    Comparison::Lt => cmp::lt(&array, &scalar),
                    Comparison::LtEq => cmp::lt_eq(&array, &scalar),
                    Comparison::Gt => cmp::gt(&array, &scalar),
                    Comparison::GtEq => cmp::gt_eq(&array, &scalar),
                }
                .map_err(|e| format!("filter on column {column:?}: {e}"))
            }
            Predicate::IsNull(column) => {
                arrow::compute::is_null(column_of(batch, column)?.as_ref()).map_err(arrow_err)
            }
            Predicate::IsNotNull(column) => {
                arrow::compute::is_not_null(column_of(batch, column)?.as_ref()).map_err(arrow_err)
            }
            Predicate::And(a, b) => {
                boolean::and_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?).map_err(arrow_err)
            }
            Predicate::Or(a, b) => {
                boolean::or_kleene(&a.evaluate(batch)?, &b.evaluate(batch)?).map_err(arrow_err)
            }
            Predicate::Not(a) => boolean::not(&a.evaluate(batch)?).map_err(arrow_err),
        }
    }
}

fn column_of<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        format!(
            "filter: the block has no column {name:?} (its columns: {})",
            names.join(", ")
        )
    })
}

/// The column and constant to compare: the constant cast to the column's
/// type (its values' type for a dictionary column), or, for a whole number
/// outside an integer column's range (`u8 < 1000`, `u32 > -1`), both as
/// Float64, which keeps their order.
fn comparable_pair(
    array: &ArrayRef,
    value: &Value,
    column: &str,
) -> Result<(ArrayRef, ArrayRef), String> {
    let data_type = compared_type(array.data_type());
    match constant_like(value, data_type, column) {
        Ok(constant) => Ok((array.clone(), constant)),
        Err(refused) if data_type.is_integer() && same_kind(value, data_type) => {
            let wide = |a: &ArrayRef| arrow::compute::cast(a, &DataType::Float64);
            let constant = constant_like(value, &DataType::Float64, column)?;
            Ok((wide(array).map_err(|_| refused)?, constant))
        }
        Err(refused) => Err(refused),
    }
}

/// The type a column's values compare as: a dictionary's values' type.
fn compared_type(data_type: &DataType) -> &DataType {
    match data_type {
        DataType::Dictionary(_, values) => values,
        other => other,
    }
}

/// `value` as a one-element array of `data_type`.
fn constant_like(value: &Value, data_type: &DataType, column: &str) -> Result<ArrayRef, String> {
    let refused = || {
        format!(
            "filter: column {column:?} has type {data_type}; {value:?} cannot be compared with it"
        )
    };
    if !same_kind(value, data_type) {
        return Err(refused());
    }
    let literal: ArrayRef = match value {
        Value::Int(v) => Arc::new(Int64Array::from(vec![*v])),
        Value::Float(v) => Arc::new(Float64Array::from(vec![*v])),
        Value::Str(v) => Arc::new(StringArray::from(vec![v.as_str()])),
        Value::Bool(v) => Arc::new(BooleanArray::from(vec![*v])),
    };
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow::compute::cast_with_options(&literal, data_type, &options)
        .ok()
        .filter(|cast| cast.null_count() == 0)
        .ok_or_else(refused)
}

/// Whether `value` means something against a column of `data_type`. Arrow
/// would cast a number to a string (and compare text) or truncate 3.5 to an
/// integer 3; both silently change what the filter keeps, so they are refused.
fn same_kind(value: &Value, data_type: &DataType) -> bool {
    match value {
        Value::Int(_) => data_type.is_numeric(),
        Value::Float(v) => data_type.is_floating() || data_type.is_numeric() && v.fract() == 0.0,
        Value::Str(_) => {
            matches!(
                data_type,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) || data_type.is_temporal()
        }
        Value::Bool(_) => data_type == &DataType::Boolean,
    }
}

/// Whether a column of `data_type` can be compared with `value`.
fn comparable(value: &Value, data_type: &DataType) -> bool {
    let data_type = compared_type(data_type);
    constant_like(value, data_type, "").is_ok()
        || data_type.is_integer() && same_kind(value, data_type)
}

/// Checks that `schema` (of `input`, for messages) has the columns
/// `predicate` reads, with types its constants can be compared with.
pub(crate) fn check(predicate: &Predicate, schema: &Schema, input: &str) -> Result<()> {
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match predicate {
        Predicate::Compare { column, value, .. } => {
            let field = schema
                .field_with_name(column)
                .map_err(|_| missing(input, column, &names()))?;
            if !comparable(value, field.data_type()) {
                return Err(Error::Invalid(format!(
                    "filter: {input} column {column:?} has type {}; {value:?} cannot be \
                     compared with it",
                    field.data_type()
                )));
            }
            Ok(())
        }
        Predicate::IsNull(column) | Predicate::IsNotNull(column) => schema
            .field_with_name(column)
            .map(|_| ())
            .map_err(|_| missing(input, column, &names())),
        Predicate::And(a, b) | Predicate::Or(a, b) => {
            check(a, schema, input)?;
            check(b, schema, input)
        }
        Predicate::Not(a) => check(a, schema, input),
    }
}

fn missing(input: &str, column: &str, names: &str) -> Error {
    Error::Invalid(format!(
        "filter: {input} has no column {column:?} (after earlier select_columns); its columns \
         are: {names}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float32, true),
            Field::new("lang", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2, 3, 4])),
                Arc::new(arrow::array::Float32Array::from(vec![
                    Some(0.1),
                    Some(0.9),
                    None,
                    Some(0.7),
                    Some(0.5),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("en"),
                    Some("de"),
                    Some("en"),
                    Some("en"),
                    None,
                ])),
            ],
        )
        .unwrap()
    }

    fn ids(predicate: Predicate) -> Vec<i64> {
        let out = predicate.apply(&batch()).unwrap();
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        ids.values().to_vec()
    }

    #[test]
    fn comparisons_cast_the_constant_to_the_column() {
        assert_eq!(ids(col("score").gt(0.5)), vec![1, 3]);
        assert_eq!(ids(col("id").lt_eq(1)), vec![0, 1]);
        assert_eq!(ids(col("lang").eq("en")), vec![0, 2, 3]);
        assert_eq!(ids(col("lang").not_eq("en")), vec![1]);
        assert_eq!(ids(col("id").gt_eq(4)), vec![4]);
    }

    #[test]
    fn nulls_are_dropped_unless_asked_for() {
        assert_eq!(ids(col("score").is_null()), vec![2]);
        assert_eq!(ids(col("lang").is_not_null().not()), vec![4]);
        assert_eq!(ids(col("score").lt(0.5).not()), vec![1, 3, 4]);
    }

    #[test]
    fn and_or_combine() {
        assert_eq!(ids(col("lang").eq("en").and(col("score").gt(0.5))), vec![3]);
        assert_eq!(ids(col("id").eq(0).or(col("lang").is_null())), vec![0, 4]);
        assert_eq!(
            col("a")
                .eq(1)
                .and(col("b").gt(2).or(col("a").is_null()))
                .columns(),
            vec!["a".to_string(), "b".to_string()]
        );
    }

    #[test]
    fn errors_name_the_column() {
        let err = col("nope").eq(1).apply(&batch()).unwrap_err();
        assert!(err.contains("no column \"nope\""), "{err}");
        let err = col("id").eq("abc").apply(&batch()).unwrap_err();
        assert!(
            err.contains("column \"id\" has type Int64") && err.contains("Str(\"abc\")"),
            "{err}"
        );
        assert!(!comparable(&Value::Str("x".into()), &DataType::Int64));
        assert!(comparable(&Value::Int(3), &DataType::Float64));
        // No silent number-to-text cast or truncation of 3.5 to 3.
        assert!(!comparable(&Value::Float(3.5), &DataType::Utf8));
        assert!(!comparable(&Value::Int(3), &DataType::Utf8));
        assert!(!comparable(&Value::Float(3.5), &DataType::Int64));
        assert!(comparable(&Value::Float(3.0), &DataType::Int64));
        assert!(comparable(
            &Value::Str("2026-01-02".into()),
            &DataType::Date32
        ));
        assert!(!comparable(&Value::Bool(true), &DataType::Int8));
    }

    #[test]
    fn out_of_range_constants_and_dictionary_columns_compare() {
        let schema = Schema::new(vec![
            Field::new("small", DataType::UInt8, false),
            Field::new(
                "lang",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
        ]);
        let lang: arrow::array::DictionaryArray<arrow::datatypes::Int32Type> =
            vec!["en", "de", "en"].into_iter().collect();
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(arrow::array::UInt8Array::from(vec![0, 200, 255])),
                Arc::new(lang),
            ],
        )
        .unwrap();
        let rows = |predicate: Predicate| predicate.apply(&batch).unwrap().num_rows();
        assert_eq!(rows(col("small").lt(1000)), 3);
        assert_eq!(rows(col("small").gt(-1)), 3);
        assert_eq!(rows(col("small").eq(300)), 0);
        assert_eq!(rows(col("small").gt(199)), 2);
        assert_eq!(rows(col("lang").eq("en")), 2);
        assert!(check(&col("small").lt(1000), batch.schema().as_ref(), "input").is_ok());
        assert!(check(&col("lang").eq("de"), batch.schema().as_ref(), "input").is_ok());
        assert!(check(&col("lang").eq(1), batch.schema().as_ref(), "input").is_err());
    }
}
