using System.ComponentModel.DataAnnotations;

namespace Arrakis.Freeside.Ledger;

public sealed class LedgerOptions
{
    public const string Section = "Ledger";

    /// <summary>How long a reservation may stay pending before the reaper expires it.</summary>
    [Range(typeof(TimeSpan), "00:00:01", "1.00:00:00", ErrorMessage = "Ledger:ReservationTtl must be between 1 s and 1 day, e.g. 00:05:00.")]
    public TimeSpan ReservationTtl { get; set; } = TimeSpan.FromSeconds(300);

    /// <summary>How often the reaper looks for expired reservations and lots.</summary>
    [Range(typeof(TimeSpan), "00:00:00.100", "01:00:00", ErrorMessage = "Ledger:ReaperInterval must be between 100 ms and 1 h, e.g. 00:00:10.")]
    public TimeSpan ReaperInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// PostgreSQL: how many ledger operations one process runs at once; the rest queue in the process, first come first
    /// served. 0 means 4 per core. Without a bound, a burst on one community puts every pooled connection's backend
    /// in line for the same rows, and on a busy database they are preempted while holding those locks.
    /// </summary>
    [Range(0, 1024, ErrorMessage = "Ledger:MaxConcurrentWrites must be between 0 (4 per core) and 1024.")]
    public int MaxConcurrentWrites { get; set; }
}
