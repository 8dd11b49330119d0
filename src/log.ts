import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs to stdout. Secrets are held in Secret objects that print as "[secret]"; the
 * redaction below is the second line of defence for anything that still carries a credential by name.
 */
export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ['*.pass', '*.password', '*.secret', '*.token', '*.accessToken', '*.authorization', '*.apiKey', 'pass', 'password', 'token'],
        censor: '[redacted]',
      },
    },
    destination ?? pino.destination({ sync: false }),
  );
}
