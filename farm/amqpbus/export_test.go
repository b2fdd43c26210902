package amqpbus

// SetWarn replaces the function with which b warns (slog.Warn). Call it
// before b's first Subscribe.
func SetWarn(b *Bus, warn func(msg string, args ...any)) { b.warn = warn }
