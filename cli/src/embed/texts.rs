//! A block's text column as the strings the embedder takes, whichever of
//! Arrow's string layouts Parquet decoded it into.

use anyhow::{Result, bail};
use arrow::array::{Array, ArrayAccessor, ArrayRef, AsArray};
use arrow::datatypes::DataType;

/// Appends every value of `array` to `texts`; a null fails with
/// `null_error(row)`, another type with an error naming it.
pub(crate) fn push_texts(
    array: &ArrayRef,
    texts: &mut Vec<String>,
    null_error: impl Fn(usize) -> anyhow::Error,
) -> Result<()> {
    fn push<'a>(
        array: impl ArrayAccessor<Item = &'a str>,
        texts: &mut Vec<String>,
        null_error: impl Fn(usize) -> anyhow::Error,
    ) -> Result<()> {
        for i in 0..array.len() {
            if array.is_null(i) {
                return Err(null_error(i));
            }
            texts.push(array.value(i).to_string());
        }
        Ok(())
    }
    match array.data_type() {
        DataType::Utf8 => push(array.as_string::<i32>(), texts, null_error),
        DataType::LargeUtf8 => push(array.as_string::<i64>(), texts, null_error),
        DataType::Utf8View => push(array.as_string_view(), texts, null_error),
        DataType::Dictionary(..) => {
            let plain = arrow::compute::cast(array, &DataType::Utf8)?;
            push(plain.as_string::<i32>(), texts, null_error)
        }
        other => bail!("text column has type {other}, not a string"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, LargeStringArray, StringArray, StringViewArray};

    use super::*;

    fn texts_of(array: ArrayRef) -> Result<Vec<String>> {
        let mut texts = Vec::new();
        push_texts(&array, &mut texts, |row| {
            anyhow::anyhow!("row {row} is null")
        })?;
        Ok(texts)
    }

    #[test]
    fn every_string_layout_is_read_and_others_are_refused() {
        let text = vec!["alpha", "beta"];
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(text.clone())),
            Arc::new(LargeStringArray::from(text.clone())),
            Arc::new(StringViewArray::from(text.clone())),
            Arc::new(
                text.iter()
                    .copied()
                    .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
            ),
        ];
        for (layout, array) in arrays.into_iter().enumerate() {
            assert_eq!(texts_of(array).unwrap(), text, "layout {layout}");
        }
        let numbers = texts_of(Arc::new(Int32Array::from(vec![1, 2]))).unwrap_err();
        assert_eq!(
            numbers.to_string(),
            "text column has type Int32, not a string"
        );
        let null = texts_of(Arc::new(StringArray::from(vec![Some("a"), None]))).unwrap_err();
        assert_eq!(null.to_string(), "row 1 is null");
    }
}
