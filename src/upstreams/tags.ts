/**
 * Message tags: one configured header (e.g. X-Tag or X-MJ-CustomID) that names what a message is about
 * ("invoice", "scan"). An upstream with a field for it carries the value there (Mailjet: EventPayload,
 * CustomID); as a metric label the value is only ever one of an explicit, bounded allow-list, so a device
 * writing arbitrary text into the header cannot grow a label's cardinality without bound.
 *
 *   tags:
 *     header: X-Tag
 *     allowed: [invoice, scan]      # label values; anything else is "other", no header "none"
 */
import { z } from 'zod';

const headerName = z.string().regex(/^[!-9;-~]{1,76}$/, { error: 'expected a header name such as X-Tag' });
const labelValue = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,63}$/, {
  error: 'expected a lower-case label value of letters, digits, "_", "." or "-" (at most 64)',
});

/** Label of a message without the header (or with an empty one). */
export const TAG_NONE = 'none';
/** Label of a message whose tag is not on the allow-list. */
export const TAG_OTHER = 'other';

export const tagsSchema = z
  .strictObject({
    header: headerName,
    /** The only values a metric label may take (besides "none" and "other"); at most 50. */
    allowed: z
      .array(labelValue)
      .max(50, { error: 'expected at most 50 allowed tag values: every value is a metric label' })
      .default([])
      .refine((v) => !v.includes(TAG_NONE) && !v.includes(TAG_OTHER), { error: `"${TAG_NONE}" and "${TAG_OTHER}" are reserved label values` }),
  });

export type TagsConfig = z.output<typeof tagsSchema>;

/**
 * The metric label for a message's tag header value: the allow-listed value it names (compared trimmed and
 * case-insensitively), "other" for any other value, "none" when the message has no tag (or tags are not
 * configured). Pure, so the metrics module can call it per message without a lookup of its own.
 */
export function tagLabel(config: Pick<TagsConfig, 'allowed'> | undefined, headerValue: string | undefined): string {
  const value = headerValue?.trim().toLowerCase() ?? '';
  if (!config || value === '') return TAG_NONE;
  return config.allowed.find((allowed) => allowed === value) ?? TAG_OTHER;
}

/**
 * Longest tag value a queued message keeps: longer than any allowed value (64), so a value cut to it never
 * becomes an allowed one, and short enough that free text in the header does not bloat every envelope.
 */
const TAG_VALUE_MAX_LENGTH = 128;

/**
 * What a message's record keeps of its tag header (MessageRecord.tag): trimmed, each run of white space one space,
 * and cut; undefined when empty. Without the runs made one, a cut could end in padding that tagLabel trims away:
 * "invoice", 200 spaces and more text would have become "invoice".
 */
export function tagValue(headerValue: string | undefined): string | undefined {
  const value = headerValue?.trim().replace(/\s+/g, ' ') ?? '';
  return value === '' ? undefined : value.slice(0, TAG_VALUE_MAX_LENGTH);
}
