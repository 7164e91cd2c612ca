//! The semantic router (see issue 3): not built yet.
