package amqpbus

// SetWarn replaces the function with which b warns (slog.Warn). Call it
// before b's first Subscribe.
func SetWarn(b *Bus, warn func(msg string, args ...any)) { b.warn = warn }

// SetAfterDeclare sets a function that each of b's subscription attempts
// calls once its queue is declared, before it uses the declare's counts.
// Call it before b's first Subscribe.
func SetAfterDeclare(b *Bus, f func()) { b.afterDeclare = f }
