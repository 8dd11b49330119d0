/**
 * Graph's size limits, and the size decision made from them before anything is sent, so a 413 never happens.
 *
 * - A Graph request may carry at most 4 MB: "413 Request Entity Too Large ... The maximum request length
 *   supported is 4MB" (user: sendMail, https://learn.microsoft.com/graph/api/user-sendmail; S/MIME and MIME
 *   payloads "are currently limited to 4 MB", https://learn.microsoft.com/graph/api/user-post-messages).
 *   The limit is taken as 4 MiB, but smarthost stays under 4,000,000 bytes so either reading holds.
 * - sendMail in MIME format takes the whole message base64-encoded as the request body (Content-Type
 *   text/plain): a message fits when 4 * ceil(size / 3) <= 4,000,000, i.e. up to 3,000,000 bytes.
 * - Anything larger goes through a draft. Graph says to POST a file "under 3 MB" to the draft's attachments
 *   (base64 in JSON) and to use an upload session "between 3 MB and 150 MB", in ranges "up to 4 MB each time"
 *   (https://learn.microsoft.com/graph/api/attachment-createuploadsession,
 *   https://learn.microsoft.com/graph/outlook-large-attachments). But base64 makes 3,000,000 bytes exactly
 *   4,000,000 before the JSON around it, so the POST is used only while that whole request fits
 *   MAX_REQUEST_BODY (attachments up to about 2,999,900 bytes, fewer with a long name), and an upload session
 *   above that.
 */

/** 4 MB read as 4 MiB: what a request may carry if Graph counts in binary; only ever a last resort. */
export const GRAPH_REQUEST_LIMIT = 4 * 1024 * 1024;

/** smarthost's own ceiling for any request body it builds: under 4 MB in both decimal and binary readings. */
export const MAX_REQUEST_BODY = 4_000_000;

/** Largest message sent as base64 MIME in one sendMail (base64 of it is exactly MAX_REQUEST_BODY). */
export const MAX_MIME_MESSAGE = (MAX_REQUEST_BODY / 4) * 3;

/** Largest attachment an upload session takes. */
export const MAX_ATTACHMENT = 150 * 1024 * 1024;

/** Bytes per upload-session PUT: 3.75 MiB, under 4 MB in both readings, and a multiple of 320 KiB. */
export const UPLOAD_CHUNK = 12 * 320 * 1024;

/**
 * Recipients per message: "The maximum total number of recipients included in the toRecipients,
 * ccRecipients, and bccRecipients properties for a single email message sent from an Exchange Online
 * mailbox is 500" (https://learn.microsoft.com/graph/api/resources/message). A delivery with more is sent
 * as several messages.
 */
export const MAX_RECIPIENTS_PER_MESSAGE = 500;

/** Length of the base64 encoding of `bytes` bytes (no line breaks). */
export function base64Length(bytes: number): number {
  return 4 * Math.ceil(bytes / 3);
}

/** The size decision: send as MIME in one request, or build a draft and upload. */
export function transportFor(messageBytes: number): 'mime' | 'draft' {
  return base64Length(messageBytes) <= MAX_REQUEST_BODY ? 'mime' : 'draft';
}
