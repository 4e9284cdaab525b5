"""Text encoders: a built-in small one (word or byte tokens + transformer), trained jointly."""
