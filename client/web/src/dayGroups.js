// The sidebar's headings: conversations grouped by when they were last updated, in the
// reader's own calendar (local days): Today, Yesterday, Previous 7 days, then by month.

const MONTH = new Intl.DateTimeFormat('en', { month: 'long', year: 'numeric' });

function startOfDay(date, daysBack = 0) {
  // setDate, not a subtraction of 24 h: days around a clock change are 23 or 25 h long.
  const day = new Date(date.getFullYear(), date.getMonth(), date.getDate());
  day.setDate(day.getDate() - daysBack);
  return day;
}

/** The heading of a conversation last updated at `date`, seen at `now`. */
export function dayLabel(date, now = new Date()) {
  if (date >= startOfDay(now)) return 'Today'; // a clock ahead of ours counts as today
  if (date >= startOfDay(now, 1)) return 'Yesterday';
  if (date >= startOfDay(now, 7)) return 'Previous 7 days';
  return MONTH.format(date);
}

/**
 * `items` ({updated_at: ISO 8601 string, …}, newest first) as [{label, items}], in the
 * same order; an item whose date cannot be read goes under Today rather than vanish.
 */
export function groupByDay(items, now = new Date()) {
  const groups = [];
  for (const item of items) {
    const date = new Date(item.updated_at);
    const label = Number.isNaN(date.getTime()) ? 'Today' : dayLabel(date, now);
    const last = groups[groups.length - 1];
    if (last && last.label === label) last.items.push(item);
    else {
      const earlier = groups.find((group) => group.label === label);
      if (earlier) earlier.items.push(item);
      else groups.push({ label, items: [item] });
    }
  }
  return groups;
}
