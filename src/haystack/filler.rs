//! The filler text haystacks are made of, written for kvscope. None of it mentions a
//! needle's answer (tested in `needles`).

/// Self-contained paragraphs on varied topics (`eval niah`'s haystacks), so any order
/// reads as a plausible collection of notes and no single stretch of text looks like a
/// repeated pattern the model can skip.
pub const NOTES: [&str; 24] = [
    "The bakery on the corner opens before the sun is up. By four in the morning the ovens are warm and the first trays of rye loaves go in, followed by the softer white rolls that the cafe across the road buys every day. The baker says the secret is patience: dough that is hurried tastes of nothing, while dough that is left to rise slowly in a cool room picks up a faint sourness that customers notice even when they cannot name it.",
    "Along the river the path follows the old towing route that horses once used to pull barges upstream. The stones at the edge are worn smooth, and in places the iron rings where ropes were tied can still be found under the moss. Walkers who come in the early evening often see herons standing in the shallows, perfectly still, waiting for a fish to come close enough to catch.",
    "Every autumn the swallows gather on the telegraph wires above the village before they leave for the south. For a week or two they chatter and wheel over the fields, then one morning they are simply gone. Children at the school keep a notebook in which they write the date of the last sighting each year, and the teacher reads out the old entries so they can compare the seasons.",
    "The town library moved into the former grain exchange after the market closed. The high windows that once lit the trading floor now fall on long reading tables, and the old clock above the entrance still runs, though it is always a few minutes slow. The librarians keep a shelf of local history near the door, with photographs of the building when it was full of farmers and sacks of wheat.",
    "When the railway reached the valley, the journey to the city shrank from two days by coach to a single afternoon. Farmers began sending milk and eggs on the morning train, and the station master kept a ledger of every crate that passed through. The line closed decades later, but the embankment remains, and part of it has become a footpath lined with blackberry bushes.",
    "A small garden can feed a family for much of the summer if it is planned with care. Beans climb the fence, lettuces grow in the shade of taller plants, and herbs fill the gaps between the stones of the path. The hardest part, most gardeners agree, is not the digging but the watering during a dry spell, when every evening is spent carrying cans back and forth from the rain barrel.",
    "The chess club meets on Thursday evenings in the back room of the community hall. Members range from schoolchildren to a retired engineer who has played for sixty years and still keeps his scores in a leather notebook. Newcomers are paired with a patient opponent for their first few games, and nobody is allowed to gloat after a win, a rule the founder wrote on a card pinned above the door.",
    "The climb to the ridge takes most of a morning. The first hour winds through pine forest where the air smells of resin, then the trees thin and the path turns to loose scree. Near the top the wind picks up, and hikers stop to pull on another layer before the final scramble. On a clear day the view reaches across three valleys to the line of peaks that stays white until early summer.",
    "On market day the square fills with stalls before seven. There are cheeses wrapped in cloth, crates of apples, buckets of cut flowers and a man who sharpens knives on a foot-powered wheel. Regular shoppers have their favourite sellers and will queue for a particular loaf or a jar of honey rather than buy the same thing from a stall with no line.",
    "The weather in the hills changes quickly. A bright morning can give way to low cloud by noon, and mist can settle in the hollows so thickly that the path markers vanish from sight. Experienced walkers carry a compass even on familiar routes, and the mountain rescue volunteers give talks every spring on how to turn back early rather than push on into worsening conditions.",
    "In the pottery studio the wheels hum quietly while students learn to centre the clay. It takes weeks before most of them can pull up a wall that does not collapse, and the shelves are lined with lopsided bowls from the first lessons. The teacher fires the kiln once a month, and opening it the next day is always a small ceremony, since nobody knows exactly how the glazes will turn out.",
    "The bicycle repair shop is no bigger than a garage, but it is rarely empty. Wheels hang from hooks on the ceiling, and a radio plays old songs while the mechanic trues a rim or replaces a chain. She charges little for small jobs and often shows customers how to fix a puncture themselves, saying that a rider who understands the machine will look after it better.",
    "On clear winter nights the astronomy society sets up its telescopes in a field outside the town, far from the street lights. Visitors queue to look at the rings of Saturn or the craters along the edge of the moon, and the members explain what they are seeing in quiet voices. Hot drinks are served from the back of a van, and the evening ends when the cold finally wins.",
    "The school play this year was an adaptation of an old folk tale about a fox who tricks a farmer. Rehearsals ran for two months, and parents sewed costumes from curtains and old coats. On the opening night the lights failed for a few seconds during the second act, but the children carried on in the dark, and the audience applauded the moment the stage lit up again.",
    "The orchard on the hill was planted by a family who arrived in the valley with a cart of saplings and little else. Some of the original trees still bear fruit, their trunks split and propped up with wooden posts. In the spring the blossom draws bees from miles around, and in the autumn volunteers help with the picking in return for a share of the apples and a jug of fresh juice.",
    "The museum of everyday things has no famous paintings. Instead it keeps irons, typewriters, radios, school desks and tins that once held tea or biscuits. Visitors often stop in front of an object they remember from their grandparents' kitchen and start telling strangers about it, which the curator says is exactly the point: the collection is meant to start conversations.",
    "The ferry crosses the estuary every half hour in summer and every hour in winter. Its deck has room for a dozen cars and a crowd of foot passengers who lean on the rail to watch the gulls. The crossing is short, but on windy days the boat rolls enough that regular travellers plant their feet wide and hold their coffee cups away from their coats.",
    "The choir rehearses in the old chapel because the stone walls give the voices a warmth that no modern hall can match. The conductor is strict about breathing and posture, and the first half hour of every rehearsal is spent on exercises that newcomers find strange. By the end of the evening, though, the harmonies fill the building, and even the singers seem surprised by the sound they make together.",
    "Keeping bees teaches patience more than anything else. The hives must be opened slowly, on calm warm days, with smoke to keep the colony quiet. A beekeeper learns to read the frames, to see where the queen has been laying and whether the workers are storing enough honey for the winter. Stings are part of the job, and most keepers stop counting them after the first season.",
    "The knitting circle began as a way for a few neighbours to spend winter evenings together. Over the years it has made blankets for the hospital, hats for a shelter and a scarf long enough to wrap around the town hall, which was displayed for a week and then cut into pieces and given away. The members say the talk matters as much as the knitting.",
    "The number nine bus takes an hour to cross the city from end to end. It passes the hospital, two schools, the football ground and a long row of shops where the same passengers get on every morning. The drivers know many of them by name, and on the last run of the night they sometimes wait an extra minute for someone they can see hurrying along the pavement.",
    "In the fishing village the boats go out before dawn and come back in the early afternoon. The catch is sorted on the quay, and the best of it goes straight to the restaurants along the front. Nets are mended on the harbour wall, and older fishermen sit on the benches there, watching the weather and offering advice that the younger crews mostly ignore.",
    "The sawmill by the stream was powered by a water wheel for over a century. When electricity arrived, the wheel was kept as a backup and then left to turn idly for visitors. Inside, the smell of fresh timber hangs in the air, and the long saw benches are still in use, cutting oak and larch for fences, barns and the occasional boat.",
    "The night market opens when the day market has packed away. Lanterns hang between the stalls, and the smell of grilled food drifts across the square. Musicians play on the steps of the old church, and families stay late on warm evenings, buying sweets for the children and sitting on the low walls to talk until the stalls begin to close.",
];

/// A continuous document of plain paragraphs on everyday subjects (the profile's
/// haystacks), cut at sentence ends.
pub const DOCUMENT: &str = include_str!("document.txt");

/// A text as paragraphs (split at blank lines) of sentences (a sentence ends with
/// ". "), trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<Vec<&str>> {
    text.split("\n\n")
        .map(|p| {
            p.split_inclusive(". ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_many_paragraphs_of_sentences() {
        let p = sentences(DOCUMENT);
        assert!(p.len() >= 12, "{}", p.len());
        assert!(p.iter().all(|s| s.len() >= 3));
        assert!(DOCUMENT.split_whitespace().count() > 1000);
    }
}
