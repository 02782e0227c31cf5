//! Running an endpoint's query on ClickHouse: binding request values to typed parameters,
//! applying the endpoint's limits, and handing back the result bytes as ClickHouse wrote them;
//! around that, the instance's protections (result cache, request limits, query slots, circuit
//! breaker, deadline) in the [`Executor`].

mod bind;
pub mod breaker;
pub mod cache;
mod error;
pub mod executor;
pub mod limits;
mod runner;

pub use bind::{BindError, BoundParams, RequestValues, bind};
pub use error::QueryError;
pub use executor::{Answer, CacheStatus, ExecError, Executor, LiveRest, QueryCall, Reachability};
pub use runner::{QueryRunner, ResultStream};
