//! Pure transforms over bytes and columns for mdmgate.
//!
//! Nothing here touches sockets, databases or protocol state; every function takes
//! input it does not trust and answers with a typed error instead of panicking.

pub mod error;
pub mod fleet;
pub mod http1;
pub mod plist;
pub mod syncml;
pub mod versions;
mod xmltext;
