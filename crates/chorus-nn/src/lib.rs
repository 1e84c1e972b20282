//! chorus-nn (in progress)
