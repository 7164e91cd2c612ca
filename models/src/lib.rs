//! Model architectures on Candle.
