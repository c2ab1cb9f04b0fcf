//! T5 relative-position buckets (transformers `T5Attention._relative_position_bucket`,
//! bidirectional): half the buckets for keys after the query, half for keys at or before it;
//! within each half, exact buckets for distances below `num_buckets / 4` and logarithmically
//! wider ones up to `max_distance`, beyond which all distances share the last bucket.

/// The bucket of `relative = key_position − query_position`. Computed in f32 exactly as the
/// reference does (`log(n / max_exact) / ln(max_distance / max_exact) · (half − max_exact)`,
/// truncated), so boundary distances land in the same bucket.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    if n < max_exact {
        return bucket + n;
    }
    let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
    let scaled = (n as f32 / max_exact as f32).ln() / denom * (half - max_exact) as f32;
    let large = (max_exact + scaled as usize).min(half - 1);
    bucket += large;
    bucket
}

/// The `[query_len, key_len]` bucket table, row-major.
pub fn bucket_table(
    query_len: usize,
    key_len: usize,
    num_buckets: usize,
    max_distance: usize,
) -> Vec<i64> {
    let mut out = Vec::with_capacity(query_len * key_len);
    for q in 0..query_len {
        for k in 0..key_len {
            out.push(
                relative_position_bucket(k as i64 - q as i64, num_buckets, max_distance) as i64,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_saturated_buckets() {
        // 32 buckets: 16 per direction, exact below 8.
        assert_eq!(relative_position_bucket(0, 32, 128), 0);
        assert_eq!(relative_position_bucket(-7, 32, 128), 7);
        assert_eq!(relative_position_bucket(7, 32, 128), 23);
        assert_eq!(relative_position_bucket(-1000, 32, 128), 15);
        assert_eq!(relative_position_bucket(1000, 32, 128), 31);
    }
}
