//! Running an endpoint's query on ClickHouse: binding request values to typed parameters,
//! applying the endpoint's limits, and handing back the result bytes as ClickHouse wrote them.

mod bind;
mod error;
mod runner;

pub use bind::{BindError, BoundParams, RequestValues, bind};
pub use error::QueryError;
pub use runner::{QueryRunner, ResultStream};
