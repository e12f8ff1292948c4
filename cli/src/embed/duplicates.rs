//! Ids that repeat in an embedding's output: the input had them, and a user
//! joining vectors back by id should know. Counted exactly (sorted in
//! arrow's row format, so any id type works).

use anyhow::Result;
use photon::arrow::array::ArrayRef;
use photon::arrow::row::{RowConverter, SortField};

/// Rows whose id equals an earlier row's, over `ids` (arrays of one type).
pub fn repeated_ids(ids: &[ArrayRef]) -> Result<u64> {
    let Some(first) = ids.first() else {
        return Ok(0);
    };
    let converter = RowConverter::new(vec![SortField::new(first.data_type().clone())])?;
    let mut rows = converter.empty_rows(0, 0);
    for array in ids {
        converter.append(&mut rows, std::slice::from_ref(array))?;
    }
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_unstable();
    Ok(sorted.windows(2).filter(|pair| pair[0] == pair[1]).count() as u64)
}

/// [`repeated_ids`] of the `id` column of the output at `url`, read back
/// through photon-data (only the parts its manifest lists).
pub fn repeated_ids_in_output(on: photon_data::Runner, url: &str) -> Result<u64> {
    // Reading one column needs no CPU of its own: the run's actors may
    // still hold the CPUs while they stop.
    let ids = photon_data::read_parquet(on, [url])
        .select_columns(&["id"])
        .read_num_cpus(0.0)
        .progress(photon_data::ProgressMode::Off)
        .iter_batches()
        .map(|batch| Ok(batch.map_err(|e| anyhow::anyhow!("{e}"))?.column(0).clone()))
        .collect::<Result<Vec<ArrayRef>>>()?;
    repeated_ids(&ids)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use photon::arrow::array::{Int64Array, StringArray};

    use super::*;

    #[test]
    fn repeats_are_counted_across_arrays_for_any_id_type() {
        let numbers: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![3, 1, 2])),
            Arc::new(Int64Array::from(vec![1, 1, 4])),
        ];
        assert_eq!(repeated_ids(&numbers).unwrap(), 2);
        let names: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["a", "b", "a", "c"]))];
        assert_eq!(repeated_ids(&names).unwrap(), 1);
        assert_eq!(repeated_ids(&[]).unwrap(), 0);
    }
}
